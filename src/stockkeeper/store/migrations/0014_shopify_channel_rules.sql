-- Per-channel availability rules (issue 18.7), set at run time through the admin API.
-- One row per channel (sku = '') and one per SKU override. A channel with no row uses
-- the rule in its config. Channel rows: NULL locations = every location, NULL cap = no
-- cap. Override rows: NULL = the channel's value (clear_cap lifts the cap).
CREATE TABLE channel_rule (
    channel        text NOT NULL,
    sku            text NOT NULL DEFAULT '',
    locations      text[],
    buffer         bigint CHECK (buffer >= 0),
    cap            bigint CHECK (cap >= 0),
    share_percent  integer CHECK (share_percent BETWEEN 0 AND 100),
    clear_cap      boolean NOT NULL DEFAULT false,
    updated_by     text NOT NULL,
    updated_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (channel, sku)
);

-- Every change of a rule, append-only: who, when, before and after (NULL: none).
CREATE TABLE channel_rule_change (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    channel     text NOT NULL,
    sku         text NOT NULL,
    before      jsonb,
    after       jsonb,
    changed_by  text NOT NULL,
    changed_at  timestamptz NOT NULL DEFAULT now(),
    repushed    integer NOT NULL DEFAULT 0
);
CREATE INDEX channel_rule_change_by_channel ON channel_rule_change (channel, id);

-- The rule that produced desired_quantity (its text, as GET .../skus/{sku} shows it).
ALTER TABLE channel_sync_state ADD COLUMN desired_rule text;
