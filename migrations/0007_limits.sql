-- llm-relay: per-principal limits (PROTOCOL v1.1), expand only.
--
-- An enqueue counts its owner's pending tasks, up to the limit, in the
-- statement that stores the task: this index keeps that count to at most
-- `RELAY_LIMIT_PENDING` index entries of that owner.

CREATE INDEX inference_tasks_owner_pending_idx ON llm_relay.inference_tasks (owner_id) WHERE status = 'pending';
