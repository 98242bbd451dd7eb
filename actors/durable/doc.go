// Package durable keeps the node's files in data_dir from taking the node
// down, and keeps what must survive a crash or a lost Redis.
//
//   - OpenBolt opens a bbolt file (the embedded history, the history spool,
//     the dedupe store) after checking it: both meta pages are read and
//     verified before bbolt maps the file, then every bucket and key/value
//     is walked once in a goroutine where a memory fault on the mapping
//     (SIGBUS on a truncated file) or a bbolt panic (a garbage page) is
//     recovered as an error. A damaged file is moved aside as
//     {name}.corrupt-{UTC time} and a fresh one started; the caller gets a
//     Damage to log and to report to Health.
//   - LockDataDir takes an exclusive flock on data_dir/LOCK, so that a
//     second process on the same data_dir says who holds it instead of
//     timing out on a bbolt lock.
//   - Health lists what was recovered, for /ready and /api/status, and
//     counts it in voltage_storage_recovered_total{component}.
//   - AuditLog appends the tamper-evident audit trail data_dir/audit.log:
//     JSON lines, each with the SHA-256 of the line before, written by one
//     goroutine with group commit and fsync, rotated by size; VerifyAudit
//     checks the chain across the rotated files (voltage audit verify).
//   - Dedupe keeps the command ids a node executed for the dedupe window in
//     data_dir/dedupe.db, committed before the write goes out, so that a
//     Redis that lost its data does not cause a second write.
//
// The file formats are described in docs/storage.md and docs/audit.md.
package durable
