"""The directory (名录库): enterprises, inspectors and products, how their rows are read, and the
change event every edit of the directory becomes (registry-change/1)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from enum import StrEnum
from typing import Annotated, Any, ClassVar, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError, field_validator

from spotcheck.errors import InvalidInput
from spotcheck.events import Event, Ident, describe_validation_error

EnterpriseId = Annotated[str, Field(pattern=r"^[0-9A-HJ-NPQRTUWXY]{18}$")]
"""A unified social credit code (统一社会信用代码): 18 characters. The model checks the form only;
records entering the directory are also checked for the GB 32100-2015 check digit (`parse_record`)."""

USCC_CHARS = "0123456789ABCDEFGHJKLMNPQRTUWXY"  # GB 32100-2015: 31 characters, values 0..30
USCC_WEIGHTS = tuple(pow(3, i, 31) for i in range(17))  # 1, 3, 9, 27, 19, 26, 16, 17, 20, …


def uscc_check_digit(first17: str) -> str:
    """The 18th character of a unified social credit code, from its first 17 (GB 32100-2015)."""
    if len(first17) != 17 or any(c not in USCC_CHARS for c in first17):
        raise ValueError(f"{first17!r} is not 17 characters of {USCC_CHARS}")
    total = sum(USCC_CHARS.index(c) * w for c, w in zip(first17, USCC_WEIGHTS, strict=True))
    return USCC_CHARS[(31 - total % 31) % 31]


def valid_uscc(code: str) -> bool:
    """True if `code` is 18 characters of the code's alphabet with the right check digit."""
    return len(code) == 18 and all(c in USCC_CHARS for c in code) and uscc_check_digit(code[:17]) == code[17]


class EnterpriseKind(StrEnum):
    PRODUCER = "producer"
    DEPOT = "depot"
    FILLING_STATION = "filling-station"
    SELLER = "seller"


class LicenceStatus(StrEnum):
    VALID = "valid"
    NOT_REQUIRED = "not-required"
    EXPIRED = "expired"
    SUSPENDED = "suspended"
    REVOKED = "revoked"


def _sorted_unique(values: Iterable[str]) -> tuple[str, ...]:
    return tuple(sorted(set(values)))


class Enterprise(BaseModel):
    """A target of the directory: who it is, where, what it makes or sells."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    enterprise_id: EnterpriseId
    name: str = Field(min_length=1, max_length=200)
    district: str = Field(min_length=1, max_length=100)
    kind: EnterpriseKind
    products: tuple[str, ...] = Field(description="product categories as the catalog names them")
    licence_status: LicenceStatus = LicenceStatus.VALID
    supplied_by: tuple[EnterpriseId, ...] = ()

    @field_validator("products", "supplied_by")
    @classmethod
    def _canonical(cls, values: tuple[str, ...]) -> tuple[str, ...]:
        return _sorted_unique(values)


class Inspector(BaseModel):
    """An enforcement officer of the directory, with the enterprises they must stay away from
    (回避: former employer, relatives)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    inspector_id: Ident
    name: str = Field(min_length=1, max_length=100)
    unit: str = Field(min_length=1, max_length=200)
    district: str = Field(min_length=1, max_length=100)
    excluded_enterprises: tuple[EnterpriseId, ...] = ()

    @field_validator("excluded_enterprises")
    @classmethod
    def _canonical(cls, values: tuple[str, ...]) -> tuple[str, ...]:
        return _sorted_unique(values)


class Product(BaseModel):
    """A product of the directory, named as the specification catalog names it ("motor gasoline"),
    with the spec ids it is judged against; a product without catalog specs ("tyres") has none."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    product: str = Field(min_length=1, max_length=100, pattern=r"^[^/;]+$")
    spec_ids: tuple[str, ...] = ()
    display_name: str | None = Field(default=None, min_length=1, max_length=200)
    name_zh: str | None = Field(default=None, min_length=1, max_length=100)

    @field_validator("spec_ids")
    @classmethod
    def _canonical(cls, values: tuple[str, ...]) -> tuple[str, ...]:
        return _sorted_unique(values)


RecordKind = Literal["enterprise", "inspector", "product"]
Record = Enterprise | Inspector | Product
MODELS: dict[str, type[Enterprise] | type[Inspector] | type[Product]] = {
    "enterprise": Enterprise,
    "inspector": Inspector,
    "product": Product,
}
ID_FIELDS: dict[str, str] = {"enterprise": "enterprise_id", "inspector": "inspector_id", "product": "product"}
PLURALS: dict[str, RecordKind] = {
    "enterprises": "enterprise",
    "inspectors": "inspector",
    "products": "product",
}
LIST_FIELDS: dict[str, tuple[str, ...]] = {
    "enterprise": ("products", "supplied_by"),
    "inspector": ("excluded_enterprises",),
    "product": ("spec_ids",),
}
COLUMNS: dict[str, tuple[str, ...]] = {k: tuple(m.model_fields) for k, m in MODELS.items()}


def kind_of(plural: str) -> RecordKind:
    """ "enterprises" -> "enterprise"; anything else is refused, naming the kinds there are."""
    try:
        return PLURALS[plural]
    except KeyError:
        raise InvalidInput(
            f"kind must be one of {', '.join(PLURALS)}, not {plural!r}", field="kind"
        ) from None


def record_id(record: Record) -> str:
    if isinstance(record, Enterprise):
        return record.enterprise_id
    if isinstance(record, Inspector):
        return record.inspector_id
    return record.product


def record_json(record: Record) -> dict[str, Any]:
    """The record as stored and published: canonical (lists sorted, every field present)."""
    return record.model_dump(mode="json")


def _bad_uscc(values: Iterable[str]) -> str | None:
    return next((v for v in values if not valid_uscc(v)), None)


def parse_record(kind: RecordKind, raw: Any, *, spec_products: Mapping[str, str] | None = None) -> Record:
    """A record of the directory from a JSON object, or InvalidInput naming the first bad field.

    Beyond the model: unified social credit codes must carry the right check digit, an enterprise
    does not supply itself, and (given `spec_products`, spec id -> product) a product's spec ids
    must be catalog specs of that product."""
    if not isinstance(raw, dict):
        raise InvalidInput(f"a {kind} record is a JSON object, not {type(raw).__name__}", field="(record)")
    try:
        record = MODELS[kind].model_validate(raw)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        field = ".".join(str(p) for p in first.get("loc", ())) or "(record)"
        raise InvalidInput(describe_validation_error(exc), field=field) from None
    if isinstance(record, Enterprise):
        for name, values in (("enterprise_id", [record.enterprise_id]), ("supplied_by", record.supplied_by)):
            bad = _bad_uscc(values)
            if bad is not None:
                raise InvalidInput(
                    f"{name}: {bad} is not a unified social credit code (its check digit should be "
                    f"{uscc_check_digit(bad[:17])})",
                    field=name,
                )
        if record.enterprise_id in record.supplied_by:
            raise InvalidInput("supplied_by: an enterprise does not supply itself", field="supplied_by")
        if not record.products:
            raise InvalidInput(
                "products: an enterprise makes or sells at least one product", field="products"
            )
    elif isinstance(record, Inspector):
        bad = _bad_uscc(record.excluded_enterprises)
        if bad is not None:
            raise InvalidInput(
                f"excluded_enterprises: {bad} is not a unified social credit code (check digit)",
                field="excluded_enterprises",
            )
    elif spec_products is not None:
        for spec_id in record.spec_ids:
            owner = spec_products.get(spec_id)
            if owner is None:
                raise InvalidInput(
                    f"spec_ids: {spec_id} is not in the specification catalog", field="spec_ids"
                )
            if owner != record.product:
                raise InvalidInput(
                    f"spec_ids: {spec_id} is a spec of {owner!r}, not of {record.product!r}", field="spec_ids"
                )
    return record


def from_csv_row(kind: RecordKind, row: Mapping[str, str | None]) -> dict[str, Any]:
    """A CSV row (header -> cell) as the JSON object of a record: empty cells are left out (the
    field's default applies), list fields are split on ';'. Unknown columns are kept, so that
    parsing names them."""
    obj: dict[str, Any] = {}
    for column, cell in row.items():
        if column is None:  # more cells than the header names
            raise InvalidInput("the row has more cells than the header has columns", field="(row)")
        name = column.strip()
        text = (cell or "").strip()
        if not text:
            continue
        if name in LIST_FIELDS[kind]:
            obj[name] = [part.strip() for part in text.split(";") if part.strip()]
        else:
            obj[name] = text
    return obj


def to_csv_row(record: Record) -> dict[str, str]:
    """The record as a CSV row that `from_csv_row` reads back (lists joined with ';')."""
    out: dict[str, str] = {}
    for name, value in record_json(record).items():
        if isinstance(value, list):
            out[name] = ";".join(value)
        else:
            out[name] = "" if value is None else str(value)
    return out


Op = Literal["upsert", "remove"]


class RegistryChange(Event):
    """One change of the directory: a record added or changed (`upsert`, with the new record) or
    removed (`record` null). `version` counts the record's versions from 1; `change_id` is
    `<kind>:<record_id>:<version>`, so a change published twice is recognised."""

    SCHEMA: ClassVar[str] = "registry-change/1"

    change_id: str = Field(min_length=1, max_length=300)
    kind: RecordKind
    record_id: str = Field(min_length=1, max_length=128)
    op: Op
    record: dict[str, Any] | None
    version: int = Field(ge=1)
    changed_at: AwareDatetime
    changed_by: str = Field(min_length=1, max_length=200)
    reason: str | None = Field(default=None, max_length=500)

    @classmethod
    def make(
        cls,
        kind: RecordKind,
        rid: str,
        op: Op,
        record: dict[str, Any] | None,
        version: int,
        changed_at: AwareDatetime,
        changed_by: str,
        reason: str | None = None,
    ) -> RegistryChange:
        return cls(
            change_id=f"{kind}:{rid}:{version}",
            kind=kind,
            record_id=rid,
            op=op,
            record=record,
            version=version,
            changed_at=changed_at,
            changed_by=changed_by,
            reason=reason,
        )


def same_record(stored: Mapping[str, Any] | str | None, record: Record) -> bool:
    """True if the stored JSON is this record (a re-import that changes nothing)."""
    if stored is None:
        return False
    data = json.loads(stored) if isinstance(stored, str) else dict(stored)
    return data == record_json(record)
