-- A dead letter keeps the message's body as the bytes that came. Text refused any body
-- with a NUL or an invalid UTF-8 sequence, so such a message could not be recorded and
-- came back forever; the admin API shows the bytes in base64 and a replay sends them
-- unchanged.
ALTER TABLE dead_letter ALTER COLUMN raw_body TYPE bytea USING convert_to(raw_body, 'UTF8');

-- The embedded queue's own dead-letter handling: a message rejected after its last
-- delivery (its failure could not even be recorded) is kept here, never delivered again.
ALTER TABLE queue_message ADD COLUMN dead_at timestamptz;
