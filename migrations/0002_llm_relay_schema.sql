-- llm-relay: the broker's tables, and their enum type, move into their own
-- schema `llm_relay`, so a host app that embeds the broker keeps its own
-- `llms`, `api_tokens`, `inference_tasks`… in `public`. Indexes, constraints,
-- the identity sequence and the foreign key move with their tables.
--
-- The migrator runs every file with `llm_relay` first on the search_path (see
-- src/db/Migrator.ts): on a database the old broker migrated, the names below
-- find the tables where 0001 put them and move them; on a fresh database 0001
-- already created them in `llm_relay` and these statements change nothing.
--
-- This is the one migration a broker of the previous version cannot run
-- beside (its statements name the tables unqualified): stop those brokers
-- before starting this version. Every later migration is expand/contract
-- (migrations/README.md).
--
-- The schema itself exists already: the migrator creates it before any file
-- runs (its migrations table lives there).

ALTER TYPE inference_task_status SET SCHEMA llm_relay;
ALTER TABLE llms SET SCHEMA llm_relay;
ALTER TABLE publisher_sessions SET SCHEMA llm_relay;
ALTER TABLE inference_tasks SET SCHEMA llm_relay;
ALTER TABLE inference_task_chunks SET SCHEMA llm_relay;
ALTER TABLE api_tokens SET SCHEMA llm_relay;
