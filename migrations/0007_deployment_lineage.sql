-- Versions made without a build (issue 13): a rollback reactivates an
-- earlier version's image, a config change (`cpub scale`, `cpub env`) runs
-- the active image with a changed manifest. Each is a deployment row of its
-- own (a new version number), so the history only grows and a build that
-- finishes late never replaces a newer rollback.
ALTER TABLE deployments
    -- how the row came about: 'build' (an upload), 'rollback', 'config'
    ADD COLUMN kind TEXT NOT NULL DEFAULT 'build' CHECK (kind IN ('build', 'rollback', 'config')),
    -- the version whose image (and, for a rollback, manifest) it took
    ADD COLUMN source_version INTEGER CHECK (source_version > 0),
    -- one line for people: "rollback to v2", "scale max_instances 10 -> 3"
    ADD COLUMN note TEXT NOT NULL DEFAULT '' CHECK (length(note) <= 1024),
    -- a row made without a build must name its source and image
    ADD CONSTRAINT deployments_derived_has_source
        CHECK (kind = 'build' OR (source_version IS NOT NULL AND image IS NOT NULL));
-- Images shared by several rows (GC asks "who still uses this image").
CREATE INDEX deployments_image ON deployments (image) WHERE image IS NOT NULL;
