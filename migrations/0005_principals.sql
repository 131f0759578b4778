-- llm-relay: tokens belong to principals (PROTOCOL v1.1), expand only.
--
-- api_tokens.principal_id
--     the principal the token acts for: what owns publisher sessions, tasks
--     and names. Several tokens may share one (rotation: issue the new,
--     revoke the old). Until now each token was its own principal, so the
--     owner columns (inference_tasks.owner_id, publisher_sessions.principal_id)
--     hold token ids: existing tokens get principal_id = id and keep owning
--     what they own (the env admin token stays principal `admin-env`).
--
--     A broker of the previous version inserts tokens without this column. A
--     trigger gives such a row principal_id = id, the principal that broker
--     takes it for, so the column can be NOT NULL during a deploy. While both
--     versions run, the previous one still takes every token for its own
--     principal (a token issued for an existing principal acts, there, as a
--     principal of its own). A later release may drop the trigger (contract).

ALTER TABLE llm_relay.api_tokens ADD COLUMN principal_id text;

UPDATE llm_relay.api_tokens SET principal_id = id WHERE principal_id IS NULL;

CREATE FUNCTION llm_relay.api_tokens_own_principal() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  IF NEW.principal_id IS NULL THEN
    NEW.principal_id := NEW.id;
  END IF;
  RETURN NEW;
END
$$;

CREATE TRIGGER api_tokens_own_principal BEFORE INSERT ON llm_relay.api_tokens
  FOR EACH ROW EXECUTE FUNCTION llm_relay.api_tokens_own_principal();

ALTER TABLE llm_relay.api_tokens ALTER COLUMN principal_id SET NOT NULL;

CREATE INDEX api_tokens_principal_idx ON llm_relay.api_tokens (principal_id);
