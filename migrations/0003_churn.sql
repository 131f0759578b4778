-- llm-relay: what routing under publisher churn needs (issue 13), expand only.
--
-- llms.stream_open   the row's session has its task stream open (on any
--                    instance): with `status = 'active'` and `healthy`, the
--                    row is online and takes tasks.
-- llms.healthy       the publisher's last report on its upstream (a new
--                    registration starts healthy); health_reason says why not.
-- llms.down_since    since when the row has not been online without having
--                    said goodbye (stream lost, heartbeat lost, registered
--                    but not streaming, unhealthy): its pool is
--                    "reconnecting" until down_since + RELAY_RECONNECT_GRACE.
--                    NULL when online, and after a goodbye.
-- publisher_sessions.stream_instance_id
--                    the instance holding the session's task stream, NULL
--                    while no stream is open.
-- inference_tasks.idempotency_key
--                    a client's Idempotency-Key: a second request with the
--                    same key from the same owner attaches to this task. The
--                    sweep clears keys older than 24 h.

ALTER TABLE llm_relay.llms ADD COLUMN stream_open boolean NOT NULL DEFAULT false;
ALTER TABLE llm_relay.llms ADD COLUMN healthy boolean NOT NULL DEFAULT true;
ALTER TABLE llm_relay.llms ADD COLUMN health_reason text;
ALTER TABLE llm_relay.llms ADD COLUMN down_since timestamptz;
ALTER TABLE llm_relay.publisher_sessions ADD COLUMN stream_instance_id text;
ALTER TABLE llm_relay.inference_tasks ADD COLUMN idempotency_key text;
CREATE UNIQUE INDEX inference_tasks_idempotency_idx ON llm_relay.inference_tasks (owner_id, idempotency_key)
  WHERE idempotency_key IS NOT NULL;
