-- llm-relay: names and pools belong to principals (PROTOCOL v1.1), expand only.
--
-- llms.owner_id
--     the principal whose publisher registered the row; NULL for a public LLM
--     (an admin's) and for a virtual row whose session is unknown. A row of
--     another principal is never adopted, reused or named again while it
--     exists. Brokers without this column's code leave it NULL on rows they
--     insert; such a row is adopted by the next principal that registers it.
--
-- pools
--     one row per pool name: its owner (the principal whose row first used
--     the name as a pool; NULL for a pool of public LLMs) and whether an admin
--     opened it to other principals (PUT /v1/pools/:name). Kept after its last
--     member is gone, so a pool cannot be taken over by waiting out its
--     members' retention.

ALTER TABLE llm_relay.llms ADD COLUMN owner_id text;

UPDATE llm_relay.llms l SET owner_id = s.principal_id
FROM llm_relay.publisher_sessions s
WHERE l.kind = 'virtual' AND l.provider_session_id = s.id;

CREATE TABLE llm_relay.pools (
  name       text PRIMARY KEY,
  owner_id   text,
  shared     boolean NOT NULL DEFAULT false,
  created_at timestamptz NOT NULL,
  updated_at timestamptz NOT NULL
);

-- existing pools: owned by the principal of their oldest member (other members stay until they re-register)
INSERT INTO llm_relay.pools (name, owner_id, shared, created_at, updated_at)
SELECT DISTINCT ON (pool) pool, CASE WHEN kind = 'public' THEN NULL ELSE owner_id END, false, created_at, created_at
FROM llm_relay.llms
ORDER BY pool, created_at, id;
