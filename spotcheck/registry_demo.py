"""A realistic demo directory for the seed city, Dongying (DOMAIN.md §3), from a seed.

About 3000 enterprises: the refined-oil chain (refineries -> depots -> filling stations, each link
a `supplied_by`), fertilizer producers and the farm-input shops they supply, wire and cable
producers and sellers, tyre makers and sellers, petroleum equipment, salt chemicals and
non-ferrous metals; about a hundred inspectors of the district market-supervision bureaus, some
with enterprises they must stay away from; the products with their catalog spec ids. Codes are
valid unified social credit codes (GB 11714 organisation code and GB 32100-2015 check digit).
The same seed gives the same directory."""

from __future__ import annotations

import random
from dataclasses import dataclass

from spotcheck.registry import (
    USCC_CHARS,
    Enterprise,
    EnterpriseKind,
    Inspector,
    LicenceStatus,
    Product,
    uscc_check_digit,
)
from spotcheck.specs import load_catalog

DEFAULT_SEED = 2026

# district -> (administrative division code used in the codes, weight of enterprises there)
DISTRICTS: dict[str, tuple[str, int]] = {
    "Dongying District": ("370502", 26),
    "Hekou District": ("370503", 12),
    "Kenli District": ("370505", 12),
    "Guangrao County": ("370523", 22),
    "Lijin County": ("370522", 10),
    "Economic-Technological Development Zone": ("370571", 12),
    "Port Economic Development Zone": ("370572", 6),
}
UNITS: dict[str, str] = {
    "Dongying District": "Dongying District Administration for Market Regulation",
    "Hekou District": "Hekou District Administration for Market Regulation",
    "Kenli District": "Kenli District Administration for Market Regulation",
    "Guangrao County": "Guangrao County Administration for Market Regulation",
    "Lijin County": "Lijin County Administration for Market Regulation",
    "Economic-Technological Development Zone": "Development Zone Branch, Dongying AMR",
    "Port Economic Development Zone": "Port Zone Branch, Dongying AMR",
}
CITY_UNIT = "Dongying Municipal Administration for Market Regulation"

# product -> (display name, name_zh); spec ids come from the catalog
PRODUCTS: dict[str, tuple[str, str]] = {
    "motor gasoline": ("Motor gasoline (stage VI)", "车用汽油"),
    "motor diesel": ("Motor diesel (stage VI)", "车用柴油"),
    "compound fertilizer": ("Compound fertilizer", "复合肥料"),
    "copper conductors": ("Copper conductors of insulated cables", "电缆的铜导体"),
    "tyres": ("Tyres (car, truck and bus)", "轮胎"),
    "petroleum equipment": ("Oilfield pumping units and wellhead equipment", "石油装备"),
    "caustic soda": ("Caustic soda (salt chemicals)", "烧碱"),
    "copper rod": ("Copper rod and strip", "铜杆"),
}
FUELS = ("motor diesel", "motor gasoline")


@dataclass(frozen=True)
class Group:
    """A kind of enterprise in the demo city: how many, what they make or sell, what they are called."""

    name: str
    count: int
    kind: EnterpriseKind
    products: tuple[str, ...]
    suffix: str
    supplied_by: str | None = None  # the group whose members supply these (1–2 each)
    licence: LicenceStatus = LicenceStatus.VALID


GROUPS: tuple[Group, ...] = (
    Group("refineries", 14, EnterpriseKind.PRODUCER, FUELS, "Petrochemical Co., Ltd."),
    Group("depots", 40, EnterpriseKind.DEPOT, FUELS, "Oil Depot Co., Ltd.", "refineries"),
    Group("stations", 360, EnterpriseKind.FILLING_STATION, FUELS, "Filling Station", "depots"),
    Group("fertilizer makers", 60, EnterpriseKind.PRODUCER, ("compound fertilizer",), "Fertilizer Co., Ltd."),
    Group(
        "farm-input shops",
        760,
        EnterpriseKind.SELLER,
        ("compound fertilizer",),
        "Farm Inputs Store",
        "fertilizer makers",
    ),
    Group("cable makers", 120, EnterpriseKind.PRODUCER, ("copper conductors",), "Wire & Cable Co., Ltd."),
    Group(
        "electrical shops",
        420,
        EnterpriseKind.SELLER,
        ("copper conductors",),
        "Electrical Supplies Store",
        "cable makers",
        LicenceStatus.NOT_REQUIRED,
    ),
    Group("tyre makers", 80, EnterpriseKind.PRODUCER, ("tyres",), "Rubber & Tyre Co., Ltd."),
    Group(
        "tyre shops",
        420,
        EnterpriseKind.SELLER,
        ("tyres",),
        "Tyre Shop",
        "tyre makers",
        LicenceStatus.NOT_REQUIRED,
    ),
    Group(
        "equipment makers",
        420,
        EnterpriseKind.PRODUCER,
        ("petroleum equipment",),
        "Petroleum Equipment Co., Ltd.",
    ),
    Group("salt chemicals", 160, EnterpriseKind.PRODUCER, ("caustic soda",), "Chemical Co., Ltd."),
    Group("non-ferrous", 150, EnterpriseKind.PRODUCER, ("copper rod",), "Non-ferrous Metals Co., Ltd."),
)
INSPECTORS = 100
NON_VALID_SHARE = (LicenceStatus.EXPIRED, LicenceStatus.SUSPENDED, LicenceStatus.REVOKED)

NAME_WORDS = (
    "Hengyuan Lihua Huaxing Shengli Haike Xinhai Yellow-River Delta Binhai Zhongxing Dongfang Jinyu"
    " Hongrun Baoli Tianhong Ruixin Kangda Fuhai Changsheng Yongxin Huarui Taishan Minghui Xintai"
    " Boxin Jiahe Guangyuan Shunda Longhai Haiyue Wanda Chenguang Huatai Dezhong Yida Qilu Hekou"
).split()
SURNAMES = "Wang Li Zhang Liu Chen Yang Zhao Huang Zhou Wu Xu Sun Ma Zhu Hu Guo He Gao Lin Luo".split()
GIVEN = "Wei Fang Lei Min Jing Qiang Yan Jun Tao Ming Hui Xin Bo Yu Hao Ling Peng Dan Kai Rui".split()
ORG_CHARS = "0123456789" + "".join(c for c in USCC_CHARS if c.isalpha())


def org_code_check(body8: str) -> str:
    """The 9th character of an organisation code (GB 11714) from its first 8."""
    weights = (3, 7, 9, 10, 5, 8, 4, 2)
    total = sum((int(c) if c.isdigit() else ord(c) - 55) * w for c, w in zip(body8, weights, strict=True))
    value = 11 - total % 11
    return {10: "X", 11: "0"}.get(value, str(value))


def make_uscc(division: str, rng: random.Random, taken: set[str]) -> str:
    """A new unified social credit code of an enterprise (9 1 …) registered in `division`."""
    while True:
        body = "MA" + "".join(rng.choice(ORG_CHARS) for _ in range(6))
        first17 = "91" + division + body + org_code_check(body)
        code = first17 + uscc_check_digit(first17)
        if code not in taken:
            taken.add(code)
            return code


@dataclass(frozen=True)
class DemoRegistry:
    products: tuple[Product, ...]
    enterprises: tuple[Enterprise, ...]
    inspectors: tuple[Inspector, ...]


def demo_products() -> tuple[Product, ...]:
    by_product: dict[str, list[str]] = {}
    for spec in load_catalog().specs():
        by_product.setdefault(spec.product, []).append(spec.id)
    return tuple(
        Product(product=name, spec_ids=tuple(by_product.get(name, ())), display_name=display, name_zh=zh)
        for name, (display, zh) in PRODUCTS.items()
    )


def _district(rng: random.Random) -> str:
    names = list(DISTRICTS)
    return rng.choices(names, weights=[DISTRICTS[n][1] for n in names])[0]


def _licence(group: Group, rng: random.Random) -> LicenceStatus:
    if rng.randrange(100) == 0:  # about one in a hundred: expired, suspended or revoked
        return rng.choice(NON_VALID_SHARE)
    return group.licence


def _enterprises(rng: random.Random) -> list[Enterprise]:
    taken: set[str] = set()
    members: dict[str, list[Enterprise]] = {}
    names: set[str] = set()
    out: list[Enterprise] = []
    for group in GROUPS:
        made: list[Enterprise] = []
        suppliers = members.get(group.supplied_by or "", [])
        for n in range(group.count):
            district = _district(rng)
            place = district.split()[0] if "Zone" not in district else rng.choice(("Dongcheng", "Xicheng"))
            name = f"{place} {rng.choice(NAME_WORDS)} {group.suffix}"
            if name in names:
                name = f"{place} {rng.choice(NAME_WORDS)} {group.suffix} No. {n + 1}"
            names.add(name)
            links = (
                rng.sample(suppliers, k=min(len(suppliers), 1 + (rng.randrange(4) == 0))) if suppliers else []
            )
            made.append(
                Enterprise(
                    enterprise_id=make_uscc(DISTRICTS[district][0], rng, taken),
                    name=name,
                    district=district,
                    kind=group.kind,
                    products=group.products,
                    licence_status=_licence(group, rng),
                    supplied_by=tuple(s.enterprise_id for s in links),
                )
            )
        members[group.name] = made
        out.extend(made)
    return out


def _inspectors(rng: random.Random, enterprises: list[Enterprise]) -> list[Inspector]:
    districts = list(DISTRICTS)
    by_district: dict[str, list[str]] = {}
    for e in enterprises:
        by_district.setdefault(e.district, []).append(e.enterprise_id)
    out: list[Inspector] = []
    for n in range(INSPECTORS):
        city = n < 16
        district = "Dongying District" if city else districts[n % len(districts)]
        excluded: list[str] = []
        if rng.randrange(100) < 15:  # a former employer or a relative's enterprise
            excluded = rng.sample(by_district[district], k=1 + rng.randrange(2))
        out.append(
            Inspector(
                inspector_id=f"DY-INSP-{n + 1:03d}",
                name=f"{rng.choice(SURNAMES)} {rng.choice(GIVEN)}",
                unit=CITY_UNIT if city else UNITS[district],
                district=district,
                excluded_enterprises=tuple(excluded),
            )
        )
    return out


def generate(seed: int = DEFAULT_SEED) -> DemoRegistry:
    """The demo directory for `seed` (the same seed, the same directory)."""
    rng = random.Random(seed)
    enterprises = _enterprises(rng)
    return DemoRegistry(demo_products(), tuple(enterprises), tuple(_inspectors(rng, enterprises)))
