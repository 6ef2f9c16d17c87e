-- A random name of this database, carried by the tags of the images its
-- builds make (`localhost/cpub-fn-<name>:v<n>-d<id>-<token>`, control's
-- `build::ImageNames`). Versions and deployment ids start at 1 in every
-- database, so two databases (a reinstall beside the old images, or control
-- planes of their own sharing one Podman) gave one tag to two images: the
-- later build took the tag, the earlier database's instances then started
-- the later one's code, its own image stayed in the store untagged for
-- good, and its function's deletion removed the other's image.
CREATE TABLE image_token (
    only_row BOOLEAN PRIMARY KEY DEFAULT true CHECK (only_row),
    token    TEXT NOT NULL CHECK (token ~ '^[0-9a-f]{12}$')
);
-- The first 12 hex digits of a version-4 UUID are random (md5 would fail
-- on a server in FIPS mode).
INSERT INTO image_token (token) VALUES (substr(replace(gen_random_uuid()::text, '-', ''), 1, 12));
