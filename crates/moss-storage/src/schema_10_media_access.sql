-- Schema version 10: when media was last served, for `moss media purge --unused-for`.
-- Written at most hourly per item; NULL means never served since this column appeared.
ALTER TABLE media ADD COLUMN last_access_ts INTEGER;
