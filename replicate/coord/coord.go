// Package coord owns the roles and terms of replicated VMs: which node is
// the primary of a VM, the generation of its term, and which nodes have
// joined a VM as backups. It knows nothing of the replication protocol
// (epochs, links, commits); the replication code asks it who may act as
// primary and checks, before it releases output, that its term still
// holds. It imports nothing else of Tandem.
//
// The decisions are made by an etcd cluster (NewEtcd). A Coordinator is
// one process's connection to it; every node runs its own.
//
// # Keys
//
// With the key prefix P (EtcdConfig.Prefix, "/tandem/" unless set):
//
//	P vm/<vm>/primary          the primary's node name; attached to the
//	                           lease of its term
//	P vm/<vm>/members/<node>   a backup node's opaque info (Join); attached
//	                           to a lease of that Join
//	P vm/<vm>/record/<name>    what a term recorded (Term.Record): the
//	                           term's generation, a space, the value
//
// # Terms and generations
//
// A term starts when a node creates the primary key (one etcd transaction:
// create the key, with the term's lease, only if it does not exist) and
// ends when the key is deleted: by Resign, by the expiry or revocation of
// the lease, or by anyone deleting it. The generation of a term is the
// create revision of its primary key. etcd's revision only grows, and a
// key's create revision is the revision of the transaction that created
// it, so every term of a VM has a generation greater than every earlier
// term's (and than that of every earlier term of any VM of the same etcd
// cluster). At most one term of a VM exists at any revision.
//
// The holder keeps its lease alive itself: every TTL/3 it sends one
// keep-alive and records, before sending it, the local time of the send.
// Term.Held is true only until the last successful keep-alive's send time
// plus the TTL minus a safety margin (a tenth of the TTL, at least 5 ms),
// read on the local monotonic clock, and false for good once it has been
// false. When Held turns false the term is lost: Term.Lost closes. It is
// also lost at once when the server says the lease is gone, when a watch
// of the key sees it deleted or holding another term, when it resigns and
// when its Coordinator closes.
//
// # Why two terms never overlap
//
// A new term can start only once the old term's key is gone. The key goes
// only when the old term resigned (its Held was false before the delete
// was sent) or when its lease expired at the server, which is at least TTL
// after the server received the holder's last successful keep-alive, hence
// at least TTL after the holder sent it. The holder's Held turned false at
// that send time plus TTL minus the margin, so before the key went and
// before a new term could begin. A holder that checks Held immediately
// before releasing output therefore never releases it while another term
// of the VM exists.
//
// This assumes that the holder's and the etcd server's clocks advance at
// about the same rate: over one TTL they may disagree by less than the
// margin (10 %; real clocks drift by a few parts per million). It assumes
// nothing about their absolute times. It also assumes the holder checks
// Held after, not before, whatever it is about to release was decided: a
// process paused between the check and the release (for longer than the
// margin) is outside the argument.
//
// # Members
//
// Join writes a member key on a lease of its own, kept alive by an etcd
// concurrency.Session. If the lease is lost (etcd unreachable for longer
// than the TTL) the Coordinator registers the member again as soon as it
// can, until leave is called or it closes. leave deletes the key and
// revokes the lease, and so does Close for every member still joined, so a
// closed Coordinator's members vanish at once; a process that dies without
// Close leaves them until their lease expires (within the TTL, give or take
// the server's expiry check, every 500 ms in etcd 3.4).
package coord

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
)

// Term is one primary term of a VM.
type Term interface {
	// Generation is greater than the generation of every earlier term of
	// this VM: the create revision of the term's primary key.
	Generation() uint64
	// Node is the node holding the term.
	Node() string
	// Held is true only while the term certainly still holds: it turns
	// false, for good, once the lease may have expired at the coordinator,
	// judged by the local clock (the last successful renewal's send time +
	// TTL − a safety margin), and when the term is lost for any other
	// reason. It is cheap: call it before every output release.
	Held() bool
	// Lost is closed when Held became false for good: renewal failed past
	// the bound, the lease was revoked or expired, the key was deleted or
	// replaced, the term resigned or the Coordinator closed.
	Lost() <-chan struct{}
	// Resign gives the term up at once (a planned stop): Held turns false,
	// Lost closes, then the primary key is deleted if it is still this
	// term's and the lease is revoked. An error means etcd may not have
	// seen that; the lease then expires within the TTL anyway.
	Resign(ctx context.Context) error
	// Record writes value under name for the VM, only while this term's
	// primary key exists (one etcd transaction guarded by its create
	// revision), so a deposed primary can record nothing. A record
	// outlives its term; the next term's overwrites it. An error wraps
	// ErrNotHeld when the term is over.
	Record(ctx context.Context, name, value string) error
}

// Coordinator decides who is primary of a replicated VM. Its methods may be
// called from several goroutines.
type Coordinator interface {
	// Acquire makes node the primary of vm if no node is. If a term of vm
	// exists, it returns an error wrapping ErrHeld that names the holder
	// and its generation; that includes a term held under node's own name
	// (an earlier process of the node whose lease has not expired yet).
	Acquire(ctx context.Context, vm, node string) (Term, error)
	// Campaign waits until node is primary of vm: it returns once no other
	// term holds the role (the holder resigned or its lease expired) and
	// this node got it. Of several campaigners exactly one wins each term.
	// Cancelling ctx ends the wait with ctx's error.
	Campaign(ctx context.Context, vm, node string) (Term, error)
	// Current reports who is primary of vm and the generation of its term,
	// or an error wrapping ErrNoPrimary when no node is.
	Current(ctx context.Context, vm string) (node string, generation uint64, err error)
	// Join registers node as a backup node of vm, with info (opaque, e.g.
	// its address), for as long as leave is not called and the Coordinator
	// is open. leave is idempotent and does not block for longer than the
	// TTL.
	Join(ctx context.Context, vm, node string, info []byte) (leave func(), err error)
	// Members lists the joined nodes of vm, sorted by node name.
	Members(ctx context.Context, vm string) ([]Member, error)
	// Recorded reads what the newest term that recorded name for vm wrote
	// (Term.Record), with that term's generation; an error wraps
	// ErrNoRecord if none did.
	Recorded(ctx context.Context, vm, name string) (value string, generation uint64, err error)
	// WatchMembers sends the full list of vm's members (as Members) first
	// at once, then on every change, until ctx ends or the Coordinator
	// closes; then it closes the channel. A slow reader delays the sends;
	// each list it gets is the whole list as of the change that caused it.
	WatchMembers(ctx context.Context, vm string) (<-chan []Member, error)
	// Close ends every term of this Coordinator (Lost closes) and revokes
	// its leases, so that its primary keys and member keys go at once (it
	// waits up to about the TTL for etcd to confirm that); afterwards every
	// method returns an error wrapping ErrClosed.
	Close() error
}

// Member is a node joined to a VM.
type Member struct {
	Node string
	Info []byte
}

var (
	// ErrHeld means another term of the VM exists.
	ErrHeld = errors.New("coord: the VM has a primary")
	// ErrNoPrimary means no node is primary of the VM.
	ErrNoPrimary = errors.New("coord: the VM has no primary")
	// ErrClosed means the Coordinator was closed.
	ErrClosed = errors.New("coord: coordinator closed")
	// ErrBadURL means a coordinator URL could not be parsed.
	ErrBadURL = errors.New("coord: bad coordinator URL")
	// ErrBadName means a VM or node name is empty or contains a '/'.
	ErrBadName = errors.New("coord: bad name")
	// ErrNotHeld means a term that is over tried to record something.
	ErrNotHeld = errors.New("coord: the term is over")
	// ErrNoRecord means no term recorded the name asked for.
	ErrNoRecord = errors.New("coord: nothing recorded")
)

// URLScheme is the scheme of a coordinator URL: etcd://HOST:PORT[,HOST:PORT...].
const URLScheme = "etcd"

// ParseURL parses the command-line form of an etcd cluster,
// etcd://HOST:PORT[,HOST:PORT...], into its endpoints (HOST:PORT each, an
// IPv6 host in brackets). Errors wrap ErrBadURL.
func ParseURL(s string) (endpoints []string, err error) {
	bad := func(format string, a ...any) error {
		return fmt.Errorf("%w %q: %s (want etcd://HOST:PORT[,HOST:PORT...])", ErrBadURL, s, fmt.Sprintf(format, a...))
	}
	scheme, rest, ok := strings.Cut(s, "://")
	if !ok {
		return nil, bad("no scheme")
	}
	if !strings.EqualFold(scheme, URLScheme) {
		return nil, bad("scheme %q is not %s", scheme, URLScheme)
	}
	if rest == "" {
		return nil, bad("no endpoint")
	}
	if i := strings.IndexAny(rest, "/?#@"); i >= 0 {
		return nil, bad("unexpected %q: only HOST:PORT endpoints are allowed", rest[i])
	}
	for _, ep := range strings.Split(rest, ",") {
		if ep == "" {
			return nil, bad("empty endpoint")
		}
		host, port, err := net.SplitHostPort(ep)
		if err != nil {
			return nil, bad("endpoint %q: %v", ep, err)
		}
		if host == "" {
			return nil, bad("endpoint %q: empty host", ep)
		}
		if strings.ContainsAny(host, "[]") {
			return nil, bad("endpoint %q: bad host", ep)
		}
		if port == "" {
			return nil, bad("endpoint %q: empty port", ep)
		}
		n, err := strconv.ParseUint(port, 10, 16)
		if err != nil || n == 0 {
			return nil, bad("endpoint %q: port %q is not a number from 1 to 65535", ep, port)
		}
		endpoints = append(endpoints, net.JoinHostPort(host, port))
	}
	return endpoints, nil
}
