-- The embedded queue's delivery limit (D-458): its claim moves a message delivered past
-- the limit into dead_letter in the same statement, so the body has to become the
-- dead letter's JSON in SQL. As store/dead_letters.py does in Python: the JSON when it is
-- JSON that jsonb can hold, NULL otherwise (not UTF-8, not JSON, a \u0000, nesting too
-- deep); the bytes are kept in raw_body either way. Any error is NULL, never raised: a
-- body that made the claim fail would stop its whole queue.
CREATE FUNCTION dead_letter_json(raw bytea) RETURNS jsonb
LANGUAGE plpgsql STABLE STRICT PARALLEL SAFE AS $$
BEGIN
    RETURN convert_from(raw, 'UTF8')::jsonb;
EXCEPTION WHEN OTHERS THEN
    RETURN NULL;
END $$;
