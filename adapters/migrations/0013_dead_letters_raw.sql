-- Dead letters keep the refused payload byte for byte, whatever it holds (NUL, bytes that are not
-- UTF-8): `raw` is the truth; the text columns show it readably, with NUL escaped as \u0000
-- (PostgreSQL text refuses U+0000).

ALTER TABLE dead_letters ADD COLUMN raw bytea;
UPDATE dead_letters SET raw = convert_to(payload, 'UTF8');
ALTER TABLE dead_letters ALTER COLUMN raw SET NOT NULL;
