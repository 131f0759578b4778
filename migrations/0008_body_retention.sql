-- llm-relay: prompts are private (PROTOCOL v1.1, RELAY_BODY_RETENTION), expand only.
--
-- inference_tasks.bodies_erased_at
--     when the sweep erased the task's request, response and stored output
--     (chunks), RELAY_BODY_RETENTION (24 h) after it finished. The row, its
--     status and its times stay until the task's own retention. NULL: not
--     erased (yet). Brokers without this column's code never erase anything.

ALTER TABLE llm_relay.inference_tasks ADD COLUMN bodies_erased_at timestamptz;

CREATE INDEX inference_tasks_unerased_idx ON llm_relay.inference_tasks (completed_at)
  WHERE bodies_erased_at IS NULL AND status IN ('completed', 'error', 'cancelled');
