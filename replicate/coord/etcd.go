package coord

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"math"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// EtcdConfig configures NewEtcd.
type EtcdConfig struct {
	// Endpoints are the etcd cluster's client endpoints, HOST:PORT (as
	// ParseURL returns them) or URLs.
	Endpoints []string
	// TTL is the lease TTL of terms and members: 2 s unless set, rounded
	// up to whole seconds (etcd leases are in seconds). A holder's Held
	// turns false at most TTL after its last successful renewal was sent.
	TTL time.Duration
	// DialTimeout bounds NewEtcd's wait for the cluster: 5 s unless set.
	DialTimeout time.Duration
	// Prefix is prepended to every key: "/tandem/" unless set.
	Prefix string
	// Log receives the coordinator's and the etcd client's messages;
	// nil means slog.Default().
	Log *slog.Logger
}

const (
	defaultTTL         = 2 * time.Second
	defaultDialTimeout = 5 * time.Second
	defaultPrefix      = "/tandem/"
	minMargin          = 5 * time.Millisecond
)

// NewEtcd connects to the etcd cluster of cfg.Endpoints and checks that it
// answers (a linearizable read) within cfg.DialTimeout: an unreachable
// cluster gives an error naming the endpoints, not a hang. ctx bounds that
// check only.
func NewEtcd(ctx context.Context, cfg EtcdConfig) (Coordinator, error) {
	if len(cfg.Endpoints) == 0 {
		return nil, errors.New("coord: no etcd endpoints")
	}
	if cfg.TTL <= 0 {
		cfg.TTL = defaultTTL
	}
	if cfg.DialTimeout <= 0 {
		cfg.DialTimeout = defaultDialTimeout
	}
	if cfg.Prefix == "" {
		cfg.Prefix = defaultPrefix
	}
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	ttlSec := int64(math.Ceil(cfg.TTL.Seconds()))
	if ttlSec < 1 {
		ttlSec = 1
	}
	eps := strings.Join(cfg.Endpoints, ",")
	log := cfg.Log.With("component", "coord", "etcd", eps)
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:   slices.Clone(cfg.Endpoints),
		DialTimeout: cfg.DialTimeout,
		Logger:      zap.New(&zapSlog{log: cfg.Log.With("component", "etcd-client")}),
	})
	if err != nil {
		return nil, fmt.Errorf("coord: etcd client for %s: %w", eps, err)
	}
	pctx, cancel := context.WithTimeout(ctx, cfg.DialTimeout)
	_, err = cli.Get(pctx, cfg.Prefix, clientv3.WithCountOnly())
	cancel()
	if err != nil {
		cli.Close()
		return nil, fmt.Errorf("coord: etcd at %s did not answer within %v: %w", eps, cfg.DialTimeout, err)
	}
	c := &etcdCoord{
		cli:    cli,
		prefix: cfg.Prefix,
		ttl:    time.Duration(ttlSec) * time.Second,
		ttlSec: ttlSec,
		log:    log,
		epoch:  time.Now(),
		terms:  map[*etcdTerm]struct{}{},
		joins:  map[*join]struct{}{},
	}
	c.margin = max(c.ttl/10, minMargin)
	c.ctx, c.cancel = context.WithCancel(context.Background())
	return c, nil
}

type etcdCoord struct {
	cli    *clientv3.Client
	prefix string
	ttl    time.Duration // the lease TTL, whole seconds
	ttlSec int64
	margin time.Duration // Held's safety margin
	log    *slog.Logger
	epoch  time.Time // origin of now(), on the monotonic clock

	ctx    context.Context // ends at Close
	cancel context.CancelFunc
	wg     sync.WaitGroup // the goroutines of terms, joins and watches

	mu     sync.Mutex
	closed bool
	terms  map[*etcdTerm]struct{}
	joins  map[*join]struct{}

	// frozen (a test hook) stops every renewal and revocation, as if the
	// process had stopped: terms then end by the clock alone.
	frozen atomic.Bool
}

// now is the local monotonic clock, in nanoseconds since c.epoch.
func (c *etcdCoord) now() int64 { return int64(time.Since(c.epoch)) }

func (c *etcdCoord) primaryKey(vm string) string { return c.prefix + "vm/" + vm + "/primary" }
func (c *etcdCoord) membersKey(vm string) string { return c.prefix + "vm/" + vm + "/members/" }

func checkName(what, s string) error {
	if s == "" || strings.Contains(s, "/") {
		return fmt.Errorf("%w: %s name %q must be non-empty and without '/'", ErrBadName, what, s)
	}
	return nil
}

// goTracked runs f in a goroutine that Close waits for, unless c is closed.
func (c *etcdCoord) goTracked(f func()) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return false
	}
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		f()
	}()
	return true
}

func (c *etcdCoord) isClosed() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.closed
}

// failed wraps err, the failure of what, adding ErrClosed if c was closed.
func (c *etcdCoord) failed(err error, format string, a ...any) error {
	what := fmt.Sprintf(format, a...)
	if c.isClosed() {
		return fmt.Errorf("coord: %s: %w (%w)", what, ErrClosed, err)
	}
	return fmt.Errorf("coord: %s: %w", what, err)
}

func (c *etcdCoord) Acquire(ctx context.Context, vm, node string) (Term, error) {
	t, _, err := c.acquire(ctx, vm, node)
	if err != nil {
		return nil, err
	}
	return t, nil
}

// acquire is one attempt to start a term. On ErrHeld it also returns the
// revision the failed transaction saw.
func (c *etcdCoord) acquire(ctx context.Context, vm, node string) (*etcdTerm, int64, error) {
	if err := errors.Join(checkName("VM", vm), checkName("node", node)); err != nil {
		return nil, 0, err
	}
	if c.isClosed() {
		return nil, 0, fmt.Errorf("coord: acquire %s for %s: %w", vm, node, ErrClosed)
	}
	key := c.primaryKey(vm)
	sent := c.now() // before the lease exists: Held's bound starts here
	g, err := c.cli.Grant(ctx, c.ttlSec)
	if err != nil {
		return nil, 0, c.failed(err, "acquire %s for %s: grant lease", vm, node)
	}
	resp, err := c.cli.Txn(ctx).
		If(clientv3.Compare(clientv3.CreateRevision(key), "=", 0)).
		Then(clientv3.OpPut(key, node, clientv3.WithLease(g.ID)), clientv3.OpGet(key)).
		Else(clientv3.OpGet(key)).
		Commit()
	if err != nil {
		c.revoke(g.ID)
		return nil, 0, c.failed(err, "acquire %s for %s", vm, node)
	}
	if !resp.Succeeded {
		c.revoke(g.ID)
		holder, gen := "?", int64(0)
		if kvs := resp.Responses[0].GetResponseRange().GetKvs(); len(kvs) > 0 {
			holder, gen = string(kvs[0].Value), kvs[0].CreateRevision
		}
		return nil, resp.Header.Revision, fmt.Errorf("coord: acquire %s for %s: %s holds it (generation %d): %w", vm, node, holder, gen, ErrHeld)
	}
	kv := resp.Responses[1].GetResponseRange().GetKvs()[0]
	ttl := c.ttl
	if granted := time.Duration(g.TTL) * time.Second; granted < ttl {
		ttl = granted
	}
	t := &etcdTerm{
		c: c, vm: vm, node: node, key: key,
		gen: kv.CreateRevision, lease: g.ID, ttl: ttl,
		lostc: make(chan struct{}),
	}
	t.ctx, t.cancel = context.WithCancel(c.ctx)
	t.lastSend.Store(sent)
	t.deadline.Store(sent + int64(ttl-c.margin))

	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		t.lose("coordinator closed")
		c.revoke(g.ID)
		return nil, 0, fmt.Errorf("coord: acquire %s for %s: %w", vm, node, ErrClosed)
	}
	c.terms[t] = struct{}{}
	c.wg.Add(2)
	c.mu.Unlock()
	go func() { defer c.wg.Done(); t.renew() }()
	go func() { defer c.wg.Done(); t.watch() }()
	c.log.Info("primary term started", "vm", vm, "node", node, "generation", t.gen)
	return t, 0, nil
}

// revoke revokes an unused or abandoned lease, best effort: a lease that
// is not revoked expires within the TTL.
func (c *etcdCoord) revoke(id clientv3.LeaseID) {
	if c.frozen.Load() {
		return
	}
	ctx, cancel := context.WithTimeout(c.ctx, c.ttl)
	defer cancel()
	if _, err := c.cli.Revoke(ctx, id); err != nil && !errors.Is(err, rpctypes.ErrLeaseNotFound) && c.ctx.Err() == nil {
		c.log.Debug("revoke lease", "lease", int64(id), "err", err)
	}
}

func (c *etcdCoord) Campaign(ctx context.Context, vm, node string) (Term, error) {
	for {
		t, rev, err := c.acquire(ctx, vm, node)
		if err == nil {
			return t, nil
		}
		if !errors.Is(err, ErrHeld) {
			return nil, fmt.Errorf("coord: campaign: %w", err)
		}
		c.log.Debug("campaign waits", "vm", vm, "node", node, "err", err)
		if err := c.waitDeleted(ctx, c.primaryKey(vm), rev+1); err != nil {
			return nil, fmt.Errorf("coord: campaign for %s as %s: %w", vm, node, err)
		}
	}
}

// waitDeleted returns once key is deleted at or after revision rev, or
// once watching it failed in a way a new attempt gets past (compaction).
func (c *etcdCoord) waitDeleted(ctx context.Context, key string, rev int64) error {
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	defer context.AfterFunc(c.ctx, cancel)()
	for wr := range c.cli.Watch(wctx, key, clientv3.WithRev(rev), clientv3.WithFilterPut()) {
		if err := wr.Err(); err != nil {
			c.log.Debug("campaign watch ended", "key", key, "err", err)
			return nil
		}
		for _, ev := range wr.Events {
			if ev.Type == mvccpb.DELETE {
				return nil
			}
		}
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	if c.isClosed() {
		return ErrClosed
	}
	return nil
}

func (c *etcdCoord) Current(ctx context.Context, vm string) (string, uint64, error) {
	if err := checkName("VM", vm); err != nil {
		return "", 0, err
	}
	if c.isClosed() {
		return "", 0, fmt.Errorf("coord: primary of %s: %w", vm, ErrClosed)
	}
	resp, err := c.cli.Get(ctx, c.primaryKey(vm))
	if err != nil {
		return "", 0, c.failed(err, "primary of %s", vm)
	}
	if len(resp.Kvs) == 0 {
		return "", 0, fmt.Errorf("coord: primary of %s: %w", vm, ErrNoPrimary)
	}
	kv := resp.Kvs[0]
	return string(kv.Value), uint64(kv.CreateRevision), nil
}

func (c *etcdCoord) Close() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil
	}
	c.closed = true
	terms := make([]*etcdTerm, 0, len(c.terms))
	for t := range c.terms {
		terms = append(terms, t)
	}
	joins := make([]*join, 0, len(c.joins))
	for j := range c.joins {
		joins = append(joins, j)
	}
	c.mu.Unlock()

	// Every term ends before its lease goes, as in Resign.
	for _, t := range terms {
		t.lose("coordinator closed")
	}
	var wg sync.WaitGroup
	for _, t := range terms {
		wg.Go(func() { c.revoke(t.lease) })
	}
	for _, j := range joins {
		wg.Go(j.leave)
	}
	wg.Wait()
	c.cancel()
	c.wg.Wait()
	if err := c.cli.Close(); err != nil && !errors.Is(err, context.Canceled) {
		return fmt.Errorf("coord: close etcd client: %w", err)
	}
	return nil
}

// abandon (a test hook) closes c as a process that dies would: nothing is
// revoked or deleted, the leases expire at the server.
func (c *etcdCoord) abandon() {
	c.frozen.Store(true)
	c.mu.Lock()
	c.closed = true
	terms := make([]*etcdTerm, 0, len(c.terms))
	for t := range c.terms {
		terms = append(terms, t)
	}
	c.mu.Unlock()
	for _, t := range terms {
		t.lose("coordinator closed")
	}
	c.cancel()
	c.wg.Wait()
	c.cli.Close()
}

// etcdTerm is a term held by this process.
type etcdTerm struct {
	c               *etcdCoord
	vm, node, key   string
	gen             int64
	lease           clientv3.LeaseID
	ttl             time.Duration
	ctx             context.Context // ends when the term is lost
	cancel          context.CancelFunc
	lastSend        atomic.Int64 // c.now() at the send of the last successful renewal (or the grant)
	deadline        atomic.Int64 // c.now() from which Held is false: lastSend + ttl - margin
	lost            atomic.Bool
	lostc           chan struct{}
	loseOnce        sync.Once
	reason          atomic.Pointer[string]
	resignAttempted atomic.Bool
}

func (t *etcdTerm) Generation() uint64    { return uint64(t.gen) }
func (t *etcdTerm) Node() string          { return t.node }
func (t *etcdTerm) Lost() <-chan struct{} { return t.lostc }

func (t *etcdTerm) Held() bool {
	if t.lost.Load() {
		return false
	}
	if t.c.now() >= t.deadline.Load() {
		t.lose("lease may have expired: no renewal succeeded in time")
		return false
	}
	return true
}

// lose ends the term for good: Held is false from now on, Lost closes, the
// renewal and the watch stop.
func (t *etcdTerm) lose(reason string) {
	t.loseOnce.Do(func() {
		t.reason.Store(&reason)
		t.lost.Store(true)
		close(t.lostc)
		t.cancel()
		t.c.mu.Lock()
		delete(t.c.terms, t)
		t.c.mu.Unlock()
		t.c.log.Info("primary term ended", "vm", t.vm, "node", t.node, "generation", t.gen, "reason", reason)
	})
}

// lostReason says why the term was lost, "" while it holds.
func (t *etcdTerm) lostReason() string {
	if r := t.reason.Load(); r != nil {
		return *r
	}
	return ""
}

func (t *etcdTerm) Resign(ctx context.Context) error {
	t.lose("resigned")
	if t.c.isClosed() {
		return fmt.Errorf("coord: resign %s (generation %d): %w", t.vm, t.gen, ErrClosed)
	}
	t.resignAttempted.Store(true)
	var errs []error
	_, err := t.c.cli.Txn(ctx).
		If(clientv3.Compare(clientv3.CreateRevision(t.key), "=", t.gen)).
		Then(clientv3.OpDelete(t.key)).
		Commit()
	if err != nil {
		errs = append(errs, fmt.Errorf("delete %s: %w", t.key, err))
	}
	if _, err := t.c.cli.Revoke(ctx, t.lease); err != nil && !errors.Is(err, rpctypes.ErrLeaseNotFound) {
		errs = append(errs, fmt.Errorf("revoke lease: %w", err))
	}
	if err := errors.Join(errs...); err != nil {
		return t.c.failed(err, "resign %s (generation %d; the lease expires within %v)", t.vm, t.gen, t.ttl)
	}
	return nil
}

// renew keeps the term's lease alive: one keep-alive every TTL/3, its send
// time recorded before it is sent; after a failure it retries until Held's
// bound passes, and then loses the term.
func (t *etcdTerm) renew() {
	c := t.c
	interval := int64(t.ttl / 3)
	retry := int64(max(t.ttl/20, 10*time.Millisecond))
	next := t.lastSend.Load() + interval
	for {
		if !sleepUntil(t.ctx, c, next) {
			break
		}
		sent := c.now()
		dl := t.deadline.Load()
		if sent >= dl {
			t.lose("lease may have expired: no renewal succeeded in time")
			break
		}
		if c.frozen.Load() {
			next = sent + interval
			continue
		}
		rctx, cancel := context.WithTimeout(t.ctx, time.Duration(dl-sent))
		resp, err := c.cli.KeepAliveOnce(rctx, t.lease)
		cancel()
		if err == nil {
			ttl := min(t.ttl, time.Duration(resp.TTL)*time.Second)
			if c.now() >= t.deadline.Load() || !t.extend(sent+int64(ttl-c.margin)) {
				t.lose("lease may have expired: no renewal succeeded in time")
				break
			}
			t.lastSend.Store(sent)
			next = sent + interval
			continue
		}
		if t.ctx.Err() != nil {
			break
		}
		if errors.Is(err, rpctypes.ErrLeaseNotFound) {
			t.lose("lease expired or revoked at etcd")
			break
		}
		now := c.now()
		if now >= t.deadline.Load() {
			t.lose(fmt.Sprintf("lease may have expired: renewal failed until the bound: %v", err))
			break
		}
		c.log.Warn("lease renewal failed; retrying", "vm", t.vm, "node", t.node, "generation", t.gen,
			"held_for", time.Duration(t.deadline.Load()-now), "err", err)
		next = min(now+retry, t.deadline.Load())
	}
	// The term is lost; its lease must not outlive it longer than needed.
	if r := t.lostReason(); r != "resigned" && r != "coordinator closed" && c.ctx.Err() == nil {
		c.revoke(t.lease)
	}
}

// extend moves Held's bound to d if that is later; false if the term was
// lost meanwhile.
func (t *etcdTerm) extend(d int64) bool {
	for {
		old := t.deadline.Load()
		if d <= old || t.deadline.CompareAndSwap(old, d) {
			break
		}
	}
	return !t.lost.Load()
}

// watch loses the term at once when its key is deleted or holds another
// term.
func (t *etcdTerm) watch() {
	c := t.c
	rev := t.gen + 1
	for {
		wctx, cancel := context.WithCancel(t.ctx)
		for wr := range c.cli.Watch(wctx, t.key, clientv3.WithRev(rev)) {
			if wr.Err() != nil {
				break
			}
			for _, ev := range wr.Events {
				switch {
				case ev.Type == mvccpb.DELETE:
					t.lose("primary key deleted")
				case ev.Kv.CreateRevision != t.gen || string(ev.Kv.Value) != t.node:
					t.lose(fmt.Sprintf("primary key now names %q (generation %d)", ev.Kv.Value, ev.Kv.CreateRevision))
				}
				rev = ev.Kv.ModRevision + 1
			}
		}
		cancel()
		if t.ctx.Err() != nil {
			return
		}
		if c.ctx.Err() != nil || c.isClosed() {
			t.lose("coordinator closed")
			return
		}
		// The watch ended (compaction, a broken stream): look at the key,
		// then watch again from there.
		gctx, gcancel := context.WithTimeout(t.ctx, t.ttl)
		resp, err := c.cli.Get(gctx, t.key)
		gcancel()
		switch {
		case err != nil:
			if !sleepUntil(t.ctx, c, c.now()+int64(t.ttl/10)) {
				return
			}
		case len(resp.Kvs) == 0:
			t.lose("primary key deleted")
			return
		case resp.Kvs[0].CreateRevision != t.gen:
			t.lose(fmt.Sprintf("primary key now names %q (generation %d)", resp.Kvs[0].Value, resp.Kvs[0].CreateRevision))
			return
		default:
			rev = resp.Header.Revision + 1
		}
	}
}

// sleepUntil waits until c.now() >= at; false if ctx ended first.
func sleepUntil(ctx context.Context, c *etcdCoord, at int64) bool {
	d := time.Duration(at - c.now())
	if d <= 0 {
		return ctx.Err() == nil
	}
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-timer.C:
		return true
	}
}

// join is one Join: a member key on a lease kept alive by a Session.
type join struct {
	c         *etcdCoord
	vm, node  string
	key, info string
	ctx       context.Context // ends at leave
	cancel    context.CancelFunc
	kept      chan struct{} // closed when keep returned
	once      sync.Once

	mu   sync.Mutex
	sess *concurrency.Session
}

func (c *etcdCoord) Join(ctx context.Context, vm, node string, info []byte) (func(), error) {
	if err := errors.Join(checkName("VM", vm), checkName("node", node)); err != nil {
		return nil, err
	}
	if c.isClosed() {
		return nil, fmt.Errorf("coord: join %s as %s: %w", vm, node, ErrClosed)
	}
	j := &join{c: c, vm: vm, node: node, key: c.membersKey(vm) + node, info: string(info), kept: make(chan struct{})}
	j.ctx, j.cancel = context.WithCancel(c.ctx)
	if err := j.register(ctx); err != nil {
		j.cancel()
		return nil, c.failed(err, "join %s as %s", vm, node)
	}
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		close(j.kept)
		j.leave()
		return nil, fmt.Errorf("coord: join %s as %s: %w", vm, node, ErrClosed)
	}
	c.joins[j] = struct{}{}
	c.wg.Add(1)
	c.mu.Unlock()
	go func() { defer c.wg.Done(); j.keep() }()
	return j.leave, nil
}

// register writes the member key on a new lease and session.
func (j *join) register(ctx context.Context) error {
	c := j.c
	g, err := c.cli.Grant(ctx, c.ttlSec)
	if err != nil {
		return fmt.Errorf("grant lease: %w", err)
	}
	s, err := concurrency.NewSession(c.cli, concurrency.WithLease(g.ID), concurrency.WithTTL(int(c.ttlSec)), concurrency.WithContext(c.ctx))
	if err != nil {
		c.revoke(g.ID)
		return fmt.Errorf("session: %w", err)
	}
	if _, err := c.cli.Put(ctx, j.key, j.info, clientv3.WithLease(g.ID)); err != nil {
		s.Close()
		return fmt.Errorf("put %s: %w", j.key, err)
	}
	j.mu.Lock()
	j.sess = s
	j.mu.Unlock()
	return nil
}

// keep registers the member again whenever its session ends (its lease
// expired while etcd was unreachable), until leave.
func (j *join) keep() {
	defer close(j.kept)
	c := j.c
	for {
		j.mu.Lock()
		s := j.sess
		j.mu.Unlock()
		select {
		case <-j.ctx.Done():
			return
		case <-s.Done():
		}
		c.log.Warn("member lease lost; joining again", "vm", j.vm, "node", j.node)
		for {
			if !sleepUntil(j.ctx, c, c.now()+int64(c.ttl/10)) {
				return
			}
			ctx, cancel := context.WithTimeout(j.ctx, c.ttl)
			err := j.register(ctx)
			cancel()
			if err == nil {
				break
			}
			if j.ctx.Err() != nil {
				return
			}
			c.log.Warn("join again failed; retrying", "vm", j.vm, "node", j.node, "err", err)
		}
	}
}

// leave deletes the member key (if it is still this Join's) and revokes
// the lease; the second and later calls do nothing.
func (j *join) leave() {
	j.once.Do(func() {
		c := j.c
		j.cancel()
		<-j.kept
		c.mu.Lock()
		delete(c.joins, j)
		c.mu.Unlock()
		j.mu.Lock()
		s := j.sess
		j.mu.Unlock()
		if s == nil || c.frozen.Load() {
			return
		}
		s.Orphan() // no more renewals; the lease is revoked below
		ctx, cancel := context.WithTimeout(c.ctx, c.ttl)
		defer cancel()
		_, err := c.cli.Txn(ctx).
			If(clientv3.Compare(clientv3.LeaseValue(j.key), "=", s.Lease())).
			Then(clientv3.OpDelete(j.key)).
			Commit()
		if err != nil && c.ctx.Err() == nil {
			c.log.Warn("leave: delete member key", "key", j.key, "err", err)
		}
		if _, err := c.cli.Revoke(ctx, s.Lease()); err != nil && !errors.Is(err, rpctypes.ErrLeaseNotFound) && c.ctx.Err() == nil {
			c.log.Warn("leave: revoke member lease", "key", j.key, "err", err)
		}
	})
}

func (c *etcdCoord) Members(ctx context.Context, vm string) ([]Member, error) {
	if err := checkName("VM", vm); err != nil {
		return nil, err
	}
	if c.isClosed() {
		return nil, fmt.Errorf("coord: members of %s: %w", vm, ErrClosed)
	}
	resp, err := c.cli.Get(ctx, c.membersKey(vm), clientv3.WithPrefix())
	if err != nil {
		return nil, c.failed(err, "members of %s", vm)
	}
	return membersOf(c.membersKey(vm), resp.Kvs), nil
}

func membersOf(prefix string, kvs []*mvccpb.KeyValue) []Member {
	ms := make([]Member, 0, len(kvs))
	for _, kv := range kvs {
		ms = append(ms, Member{Node: strings.TrimPrefix(string(kv.Key), prefix), Info: kv.Value})
	}
	return ms
}

func (c *etcdCoord) WatchMembers(ctx context.Context, vm string) (<-chan []Member, error) {
	if err := checkName("VM", vm); err != nil {
		return nil, err
	}
	prefix := c.membersKey(vm)
	if c.isClosed() {
		return nil, fmt.Errorf("coord: watch members of %s: %w", vm, ErrClosed)
	}
	resp, err := c.cli.Get(ctx, prefix, clientv3.WithPrefix())
	if err != nil {
		return nil, c.failed(err, "watch members of %s", vm)
	}
	out := make(chan []Member)
	wctx, cancel := context.WithCancel(ctx)
	stop := context.AfterFunc(c.ctx, cancel)
	run := func() {
		defer close(out)
		defer cancel()
		defer stop()
		cur := map[string][]byte{}
		for _, m := range membersOf(prefix, resp.Kvs) {
			cur[m.Node] = m.Info
		}
		var last []Member
		send := func() bool {
			ms := make([]Member, 0, len(cur))
			for _, n := range slices.Sorted(maps.Keys(cur)) {
				ms = append(ms, Member{Node: n, Info: cur[n]})
			}
			if last != nil && slices.EqualFunc(ms, last, func(a, b Member) bool {
				return a.Node == b.Node && string(a.Info) == string(b.Info)
			}) {
				return true
			}
			select {
			case out <- ms:
				last = ms
				return true
			case <-wctx.Done():
				return false
			}
		}
		if !send() {
			return
		}
		rev := resp.Header.Revision + 1
		for {
			for wr := range c.cli.Watch(wctx, prefix, clientv3.WithPrefix(), clientv3.WithRev(rev)) {
				if wr.Err() != nil {
					break
				}
				for _, ev := range wr.Events {
					node := strings.TrimPrefix(string(ev.Kv.Key), prefix)
					if ev.Type == mvccpb.DELETE {
						delete(cur, node)
					} else {
						cur[node] = ev.Kv.Value
					}
					rev = ev.Kv.ModRevision + 1
				}
				if !send() {
					return
				}
			}
			if wctx.Err() != nil {
				return
			}
			// The watch ended (compaction, a broken stream): read the list
			// again and watch from there.
			gctx, gcancel := context.WithTimeout(wctx, c.ttl)
			r, err := c.cli.Get(gctx, prefix, clientv3.WithPrefix())
			gcancel()
			if err != nil {
				if !sleepUntil(wctx, c, c.now()+int64(c.ttl/10)) {
					return
				}
				continue
			}
			clear(cur)
			for _, m := range membersOf(prefix, r.Kvs) {
				cur[m.Node] = m.Info
			}
			rev = r.Header.Revision + 1
			if !send() {
				return
			}
		}
	}
	if !c.goTracked(run) {
		cancel()
		stop()
		return nil, fmt.Errorf("coord: watch members of %s: %w", vm, ErrClosed)
	}
	return out, nil
}

// zapSlog is a zap core that hands the etcd client's messages to slog.
type zapSlog struct {
	log    *slog.Logger
	fields []zapcore.Field
}

func slogLevel(l zapcore.Level) slog.Level {
	switch {
	case l <= zapcore.DebugLevel:
		return slog.LevelDebug
	case l == zapcore.InfoLevel:
		return slog.LevelInfo
	case l == zapcore.WarnLevel:
		return slog.LevelWarn
	default:
		return slog.LevelError
	}
}

func (z *zapSlog) Enabled(l zapcore.Level) bool {
	return z.log.Enabled(context.Background(), slogLevel(l))
}

func (z *zapSlog) With(fs []zapcore.Field) zapcore.Core {
	return &zapSlog{log: z.log, fields: append(slices.Clip(z.fields), fs...)}
}

func (z *zapSlog) Check(e zapcore.Entry, ce *zapcore.CheckedEntry) *zapcore.CheckedEntry {
	if z.Enabled(e.Level) {
		return ce.AddCore(e, z)
	}
	return ce
}

func (z *zapSlog) Write(e zapcore.Entry, fs []zapcore.Field) error {
	enc := zapcore.NewMapObjectEncoder()
	for _, f := range z.fields {
		f.AddTo(enc)
	}
	for _, f := range fs {
		f.AddTo(enc)
	}
	attrs := make([]slog.Attr, 0, len(enc.Fields))
	for _, k := range slices.Sorted(maps.Keys(enc.Fields)) {
		attrs = append(attrs, slog.Any(k, enc.Fields[k]))
	}
	z.log.LogAttrs(context.Background(), slogLevel(e.Level), e.Message, attrs...)
	return nil
}

func (z *zapSlog) Sync() error { return nil }

func (c *etcdCoord) recordKey(vm, name string) string {
	return c.prefix + "vm/" + vm + "/record/" + name
}

// Record implements Term.
func (t *etcdTerm) Record(ctx context.Context, name, value string) error {
	if err := checkName("record", name); err != nil {
		return err
	}
	if !t.Held() {
		return fmt.Errorf("coord: recording %s for %s: %w", name, t.vm, ErrNotHeld)
	}
	v := strconv.FormatInt(t.gen, 10) + " " + value
	resp, err := t.c.cli.Txn(ctx).
		If(clientv3.Compare(clientv3.CreateRevision(t.key), "=", t.gen)).
		Then(clientv3.OpPut(t.c.recordKey(t.vm, name), v)).
		Commit()
	if err != nil {
		return t.c.failed(err, "recording %s for %s", name, t.vm)
	}
	if !resp.Succeeded {
		return fmt.Errorf("coord: recording %s for %s: %w", name, t.vm, ErrNotHeld)
	}
	return nil
}

// Recorded implements Coordinator.
func (c *etcdCoord) Recorded(ctx context.Context, vm, name string) (string, uint64, error) {
	if err := checkName("VM", vm); err != nil {
		return "", 0, err
	}
	if err := checkName("record", name); err != nil {
		return "", 0, err
	}
	if c.isClosed() {
		return "", 0, fmt.Errorf("coord: record %s of %s: %w", name, vm, ErrClosed)
	}
	resp, err := c.cli.Get(ctx, c.recordKey(vm, name))
	if err != nil {
		return "", 0, c.failed(err, "record %s of %s", name, vm)
	}
	if len(resp.Kvs) == 0 {
		return "", 0, fmt.Errorf("coord: record %s of %s: %w", name, vm, ErrNoRecord)
	}
	g, v, ok := strings.Cut(string(resp.Kvs[0].Value), " ")
	gen, err := strconv.ParseUint(g, 10, 64)
	if !ok || err != nil {
		return "", 0, fmt.Errorf("coord: record %s of %s is malformed: %q", name, vm, resp.Kvs[0].Value)
	}
	return v, gen, nil
}
