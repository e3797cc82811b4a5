-- dms:no-transaction
-- Step 2 of 3: prove the range on every existing row. VALIDATE CONSTRAINT scans the table under a
-- SHARE UPDATE EXCLUSIVE lock, which lets GPS inserts and reads go on; run alone (no transaction)
-- so no stronger lock is held while it scans.
ALTER TABLE driver_locations VALIDATE CONSTRAINT driver_locations_legacy_range;
