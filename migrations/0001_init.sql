-- llm-relay: first schema. Timestamps are always written by the broker from
-- Effect's Clock (never now()), so TestClock drives every lifecycle decision.

CREATE TABLE llms (
  id                  text PRIMARY KEY,
  name                text NOT NULL UNIQUE,
  kind                text NOT NULL CHECK (kind IN ('virtual', 'public')),
  type                text NOT NULL DEFAULT 'openai',
  model               text NOT NULL,
  url                 text,
  api_key             text,
  pool                text NOT NULL,
  tier                text NOT NULL DEFAULT 'fast',
  description         text NOT NULL DEFAULT '',
  extra_config        jsonb NOT NULL DEFAULT '{}'::jsonb,
  provider_session_id text,
  status              text NOT NULL CHECK (status IN ('active', 'inactive')),
  last_heartbeat_at   timestamptz,
  inactive_since      timestamptz,
  max_concurrent      integer NOT NULL DEFAULT 4 CHECK (max_concurrent BETWEEN 1 AND 1024),
  version             integer NOT NULL DEFAULT 1,
  created_at          timestamptz NOT NULL,
  updated_at          timestamptz NOT NULL
);
CREATE INDEX llms_pool_idx ON llms (pool);
CREATE INDEX llms_session_idx ON llms (provider_session_id) WHERE provider_session_id IS NOT NULL;
CREATE INDEX llms_stale_idx ON llms (last_heartbeat_at) WHERE kind = 'virtual' AND status = 'active';
CREATE INDEX llms_inactive_idx ON llms (inactive_since) WHERE kind = 'virtual' AND status = 'inactive';

CREATE TABLE publisher_sessions (
  id                text PRIMARY KEY,
  principal_id      text NOT NULL,
  instance_id       text,
  connected_at      timestamptz,
  last_heartbeat_at timestamptz NOT NULL,
  created_at        timestamptz NOT NULL
);

CREATE TYPE inference_task_status AS ENUM ('pending', 'claimed', 'running', 'completed', 'error', 'cancelled');

CREATE TABLE inference_tasks (
  id                text PRIMARY KEY,
  -- enqueue order: FIFO among tasks enqueued in the same millisecond
  seq               bigint GENERATED ALWAYS AS IDENTITY,
  status            inference_task_status NOT NULL DEFAULT 'pending',
  pool              text NOT NULL,
  llm_name          text,
  model             text NOT NULL,
  tier              text,
  path              text NOT NULL,
  streaming         boolean NOT NULL DEFAULT false,
  priority          integer NOT NULL DEFAULT 0,
  request_body      jsonb NOT NULL,
  response_status   integer,
  response_body     jsonb,
  error_type        text,
  error_message     text,
  claimed_by        text,
  claimed_llm       text,
  attempts          integer NOT NULL DEFAULT 0,
  output_started    boolean NOT NULL DEFAULT false,
  chunk_count       integer NOT NULL DEFAULT 0,
  owner_id          text NOT NULL,
  agent_id          text,
  created_at        timestamptz NOT NULL,
  updated_at        timestamptz NOT NULL,
  claimed_at        timestamptz,
  stream_started_at timestamptz,
  completed_at      timestamptz
);
-- dispatch: the claim statement walks this in priority, then age, order
CREATE INDEX inference_tasks_dispatch_idx ON inference_tasks (pool, priority DESC, created_at, seq) WHERE status = 'pending';
CREATE INDEX inference_tasks_pinned_idx ON inference_tasks (llm_name, priority DESC, created_at, seq) WHERE status = 'pending' AND llm_name IS NOT NULL;
CREATE INDEX inference_tasks_pending_age_idx ON inference_tasks (created_at) WHERE status = 'pending';
-- disconnect revert and the claim/run timeouts
CREATE INDEX inference_tasks_held_idx ON inference_tasks (claimed_by, claimed_llm) WHERE status IN ('claimed', 'running');
CREATE INDEX inference_tasks_claimed_age_idx ON inference_tasks (claimed_at) WHERE status IN ('claimed', 'running');
-- retention sweep
CREATE INDEX inference_tasks_completed_idx ON inference_tasks (completed_at) WHERE status IN ('completed', 'error', 'cancelled');
-- listings
CREATE INDEX inference_tasks_owner_idx ON inference_tasks (owner_id, created_at DESC, id DESC);
CREATE INDEX inference_tasks_agent_idx ON inference_tasks (agent_id) WHERE agent_id IS NOT NULL;

-- Streamed output, one row per posted batch (not per delta): lets a client
-- that attaches late replay the stream in order.
CREATE TABLE inference_task_chunks (
  task_id    text NOT NULL REFERENCES inference_tasks (id) ON DELETE CASCADE,
  seq        integer NOT NULL,
  chunks     text[] NOT NULL,
  PRIMARY KEY (task_id, seq)
);

CREATE TABLE api_tokens (
  id         text PRIMARY KEY,
  name       text NOT NULL,
  role       text NOT NULL CHECK (role IN ('admin', 'publisher', 'client')),
  token_hash text NOT NULL UNIQUE,
  created_at timestamptz NOT NULL,
  revoked_at timestamptz
);
