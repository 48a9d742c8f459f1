// Package replicate owns Tandem's high availability: epochs, grouping of
// dirty pages into regions, assignment of regions to links, the transports
// that carry them, the replica store, the commit rule, and recovery.
//
// It never issues an ioctl. The primary sees its VM through the Source
// interface (pause, resume, harvest dirty pages, guest memory, captured
// state), which package vmm implements; the leader hands a recovered memory
// image and state back to vmm to run.
//
// # One epoch (synchronous mode)
//
// Every epoch interval the primary pauses the VM, harvests the dirty pages,
// captures the vCPU and device state, and seals the output the guest wrote
// during the epoch in the OutputGate. Grouping merges the dirty pages into
// regions: by cost unless PrimaryConfig.SGMax fixes a bound (a clean gap is
// sent along only where that is cheaper on the links in service than one
// more element: its map entry plus what the link measured an element to
// cost when it connected (a TCP link's probe, probe.go) or, on RDMA, a
// share of a work request; at usual rates that is less than a page; with SGMax, seed 003's fixed 32, across the smallest gaps). The Assigner
// splits the regions across links (Algorithm 1 of seed 003, "fast") or
// sends each one on every link ("ft"). Each link then carries, like an
// RDMA one-sided write followed by a write-with-immediate, a map record
// (where the pages go, and for which epoch), the pages themselves, and a
// completion marker. An RDMA link writes the pages straight from guest
// memory; a TCP link sends them as pagecodec records (zero pages, deltas
// against copies the replica is known to hold, zstd: see reduce.go for
// the rule that makes a delta safe), or raw with Reduction none, or when
// reducing does not pay. The state goes to the leader (with a
// coordinator, to every state holder). When every live link and the
// leader have acknowledged epoch e, e is committed: its output is
// released, every replica is told, and the VM resumes.
//
// With PrimaryConfig.Speculate, part of an epoch's pages go while the VM
// still runs, and the pause sends only what was written since: the epoch
// then arrives in two parts, staged as one (speculate.go).
//
// With PrimaryConfig.ActiveBackup, a node that holds the state may run a
// shadow of the VM from each epoch its store applied (ReplicaConfig.Shadow);
// the link to it then carries, after the map, a hash per page, the node
// answers which pages its shadow wrote differently, and the others travel
// as kept records that it fills from the shadow, each checked by hash and
// checksum, so that a wrong shadow costs bytes, never a page (active.go).
//
// # The commit rule and recovery
//
// A replica stages an epoch's data per link and applies it to its store
// (pages plus a per-page epoch number) only once it learns that the epoch is
// committed, so a store never holds half an epoch and never loses the
// previous epoch's copy of a page to an epoch that may not commit. The
// primary starts an epoch on a link only after deciding the previous one, so
// a link holds at most one staged epoch.
//
// When the primary fails, the leader asks every replica what it has applied
// and staged. E is the highest epoch for which every link that carried part
// of it completed its transfer and the leader holds the state. Replicas apply
// staged epochs up to E and discard later ones; the leader then takes, for
// every page, the copy with the highest epoch and restores the state of E.
// The leader fetches the pages straight into the memory the new VM will
// run on (StartRecovery, then Recovery.FetchInto), so a takeover holds one
// copy of guest RAM, not an image beside the VM's memory.
// Output is released only after its epoch commits, and a committed epoch is
// complete everywhere, so E is never older than anything a client has seen.
// It may be newer (a request processed whose reply was still held): clients
// see that as at-least-once delivery.
//
// With PrimaryConfig.Persist (local.go) the primary also makes each epoch
// durable on its own host, staged while the VM is paused and written while
// the epoch is transferred, and the commit rule gains a clause: an epoch
// commits only once it is durable there too. The whole cluster may then
// lose power at once: the primary's directory holds every epoch whose
// output left.
//
// A replica opened on a directory (OpenReplica, replica_persist.go, the
// format in package replicadir) acknowledges nothing it has not made
// durable: a link's epoch before its MsgAck, the leader's state before its
// MsgAck, a newer generation before anything of it. The commit rule then
// holds across the whole cluster losing power with no clause added: every
// committed epoch is in the replicas' and the leader's directories, and a
// leader reopened with no primary to reconnect takes over from the
// reopened replicas as after a primary's failure.
//
// # Generations and fencing
//
// Every primary term has a generation: the VM's first primary runs
// generation 1 (or what the coordinator granted), and a takeover runs the
// next one. The rule that keeps a deposed primary harmless is the commit
// rule's twin:
//
//   - Every message carries its connection's generation, fixed by the
//     connection's hello; a message carrying another is a protocol error
//     and the connection is dropped.
//   - A node remembers the newest generation any hello brought it. A hello
//     of an older one is refused with MsgFenced (which names the newer),
//     and every live connection of an older one is told so and closed;
//     from then on nothing of the older term changes the node: no map, no
//     data, no completion, no commit, no state.
//   - A link's first map of a newer generation starts a fresh stage: the
//     older term's staged epoch was settled by the recovery that began the
//     new term (or, at a node the recovery did not reach, is dropped; such
//     a node gets a full copy from the new primary before it counts), and
//     the binding rules start again with the term. The leader drops the
//     older term's states when a newer one's state connection arrives.
//   - A primary told it is fenced, on any connection, stops: it neither
//     commits nor releases output, and does not carry on degraded.
//
// So epoch (g, e) commits only when every live link and the state holder
// acknowledged it within generation g; a takeover's recovery reaches the
// replicas with generation g+1 before it reads them, so once it has chosen
// E the old primary can make no replica apply, and no leader acknowledge,
// anything more. Epoch numbers go on across terms (the new primary starts
// after the epoch it recovered), so a page's epoch in a store never goes
// back. RDMA links are bound to the generation of the authenticated set-up
// that issued their ticket, and checked against it at every epoch.
//
// # Continuous protection
//
// Losing a backup never stops the VM. Without its leader, or with no link
// left, nothing can commit: the primary holds the output (its writers
// wait once the gates are full) and lets the guest run, carries the pages
// of every epoch that did not commit into the next, and dials again with
// a growing backoff. A leader that answers again has its disk copies
// brought up to date with the guest paused; a link that answers again
// counts at once with fast (the links left got a full copy when it was
// lost) and, with ft, once it has been sent all of memory, a slice per
// epoch (rejoin.go): until then it is in no epoch's state, so recovery
// never relies on it. A link's welcome says where its replica stands, so
// the first map on a new connection carries a commit the binding rules
// allow and applies nothing the primary never committed.
//
// The primary tells its leader how it replicates (Cluster). The node that
// takes over runs the VM as the recovered generation, from the epoch
// after the one it recovered (PrimaryConfig.StartEpoch: a page's epoch in
// a store never goes back, and that first copy sends all of memory), over
// the links left less its own (Cluster.Successor), starting with whatever
// answers (PrimaryConfig.Reprotect).
//
// With a coordinator (package coord) the primary's term is a lease: its
// generation is the coordinator's, no epoch commits and no output leaves
// unless the term certainly still holds (PrimaryConfig.Term), and a
// takeover happens only once the old term's lease has expired. The
// primary then broadcasts every state to several nodes, the leader first
// (PrimaryConfig.Holders, holders.go), and the commit rule gains a clause:
// an epoch with a state commits only once every holder in service
// acknowledged that state and the coordinator has the set of those that
// did (PrimaryConfig.RecordHolders, recorded whenever the set changes,
// before the commit). A holder that fails is taken out of the set, so
// losing the leader, even together with the primary, loses nothing and
// stalls nothing: every node of the newest record holds the state of the
// newest committed epoch, and only those may take over that term's VM
// (the nodes leave the failure to the lease: see
// ReplicaConfig.Coordinated). A graceful stop records the empty set:
// nobody takes over. Without a coordinator, the designated leader stays the only node
// that can take over, and the only one the primary sends state to: two
// holders could otherwise both take over. Recovery refuses a holder whose
// states are older than an epoch a replica applied: another node led
// after it.
//
// # Disks
//
// Disk replication rides the commit rule. Before the first epoch the
// primary brings the leader's copy of each disk to its own content over
// the state connection, sending only the chunks whose hashes differ
// (package disk), and the leader makes each copy durable; the leader
// refuses state for an epoch while a copy it holds is not synchronised,
// and refuses a disk it holds no copy of, or one of another size. Each
// epoch's disk writes (the blocks written, as they are at the pause, and
// whether the guest flushed) travel inside that epoch's state, and the
// leader applies an epoch's writes to its copies only once it learns the
// epoch is committed, in epoch order (ReplicaConfig.Committed); at
// recovery it applies those up to E and discards the rest. So the disk and
// the memory of a recovered VM are always of the same epoch, no write of
// an uncommitted epoch reaches a copy, and none of a committed epoch is
// lost. A write is complete for the guest once the primary's disk has it;
// a flush is durable on the primary at once and on the leader once its
// epoch commits: what the outside learns of either waits for the commit
// in the output gates.
//
// # Deadlines and liveness
//
// Nothing waits on a peer without a deadline, and no deadline assumes a
// fixed link speed. Each link keeps a measured rate (an EWMA of the bytes
// per second of its acknowledged epochs of 1 MiB or more); an epoch's
// sends and acknowledgement on a link must be done within AckTimeout plus
// the link's bytes at a quarter of that rate, and never at less than the
// floor, PrimaryConfig.MinLinkRate (1 MB/s unless set). A link that does
// not make its deadline has failed; a slow one is given the time its
// bytes need. The state and the leader's acknowledgement get AckTimeout
// plus the state's bytes at the floor. During recovery every step, and
// every MiB of a fetch, gets RecoveryStepTimeout.
//
// For the leader, a primary is alive while its epochs progress, not while
// some goroutine of it sends heartbeats. Every state message announces how
// long the primary allows that epoch's transfer (Within) and its epoch
// interval; after it, the leader expects the epoch's commit, or the next
// epoch's state, within Within + interval + HeartbeatTimeout, and after a
// commit the next state within interval + HeartbeatTimeout. Heartbeats
// carry the newest committed epoch, and a new one counts as a commit. A
// primary that misses its bound is declared failed even while heartbeats
// arrive (an epoch loop wedged in a pause, a capture or an output device).
// An idle primary is not: it pauses and commits every epoch anyway. The
// rule starts with the first state (the initial copy has none, and a
// leader without a state could not take over anyway); before it, and
// always, a connection silent for HeartbeatTimeout has failed too. A state
// message, once its header arrived, may take HeartbeatTimeout plus its
// length at ReplicaConfig.MinLinkRate.
//
// # Authentication and the binding rules
//
// Every replication connection (links, the state connection, recovery,
// the TCP set-up of an RDMA link) is authenticated by package auth before
// a single Tandem message is read: both ends prove they hold the shared
// key, and the connection is then encrypted (TLS 1.3) unless both run in
// plaintext mode. A peer without the key is told nothing and costs a
// bounded handshake; nothing is decoded or allocated from its claims.
//
// Authentication says who may speak; the binding rules say what an
// authenticated peer may say on a replica, so that a confused or stale
// primary cannot break the commit rule either:
//
//   - Each link index is bound to one live connection (TCP or RDMA) of the
//     VM's primary. A second connection claiming a live link index is
//     refused at its hello; the index is free again once its connection
//     ends.
//   - On a link, map epochs increase: a map whose epoch is not above the
//     link's previous map (on any earlier connection too) is refused and
//     the connection dropped.
//   - A commit, whether a map's committed field or a commit message, may
//     not exceed the newest epoch the link has acknowledged (the primary
//     commits an epoch only after every live link acknowledged it), nor go
//     below a commit the link already carried. A commit that does is
//     refused and the connection dropped.
//
// A refused message changes neither the store nor the link's staging.
//
// The leader's state connection follows the same rule. The first hello
// of any role that authenticates binds the leader to its VM id (every
// connection is authenticated, so only a holder of the key can bind it);
// a state hello for another VM is refused, and so is a second state
// connection while one is live. When the state connection ends (not by
// goodbye) its slot is free again and the primary redials it, for up to
// its AckTimeout, sending again the state the leader had not acknowledged
// and its newest commit; if no state connection is admitted within the
// leader's ReconnectWait of the break (250 ms unless set: a live primary
// redials at once, and the wait is downtime after a crash), the leader
// declares the primary
// failed, and from then on refuses every state hello: a primary that comes
// back later would contradict the takeover. A connection that goes silent
// (no message for HeartbeatTimeout) or whose epochs stop progressing is
// failed at once, without the grace.
//
// The leader never builds an image unless every page's newest copy came
// from a replica that answered every step. A replica that fails or goes
// silent after answering the query (each step has a deadline, and
// cancelling recovery closes every connection) is dropped: with ft, E is
// chosen again from the replicas left, which hold every page; with fast,
// the pages only it held have no other copy, so recovery stops with an
// error that names it rather than run an image with holes.
package replicate
