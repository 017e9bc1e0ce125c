-- 008_hot_path_fk.sql - no foreign-key triggers on the ingest hot path.
--
-- Profiling cms.ingest_batch (docs/benchmarks.md, P1) showed the foreign keys
-- of cms.messages costing ~14 % of the ingest backend's CPU: one RI trigger
-- query per stored message. Their guarantee holds by construction:
--   * device_id comes from the device the TLS session authenticated, looked up
--     in cms.devices; devices are never deleted (decommissioning is a status,
--     and no role but the schema owner may DELETE from cms.devices);
--   * patient_ref is the id cms.ingest_batch itself inserted or found in
--     cms.patients in the same statement; patients are never deleted either.
-- An orphan could only come from the schema owner deleting rows by hand.
ALTER TABLE cms.messages DROP CONSTRAINT IF EXISTS messages_device_id_fkey;
ALTER TABLE cms.messages DROP CONSTRAINT IF EXISTS messages_patient_ref_fkey;
