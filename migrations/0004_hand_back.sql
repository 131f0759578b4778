-- llm-relay: publisher hand-backs (`POST error` with `"retry": true`), expand only.
--
-- inference_tasks.handed_back_by
--     the session that last handed the task back (its upstream could not be
--     reached) since it was last claimed: while another member of the pool is
--     online, that session's claims skip the task, so the retry goes to
--     another member. Cleared by the next claim. Brokers without this column's
--     code never set it, and a NULL skips nothing.

ALTER TABLE llm_relay.inference_tasks ADD COLUMN handed_back_by text;
