// init: the initramfs init of Tandem's Linux test guest.
//
// It runs as PID 1, reports on the console (COM1) with lines that start
// with "tandem-init: ", exercises each virtio device it finds, and then
// reboots, which with the kernel's reboot=k is an i8042 reset: Tandem
// stops the VM and `tandem run` exits 0. Steps:
//
//   1. mount devtmpfs on /dev, take /dev/console as stdin/stdout/stderr,
//      print "tandem-init: up" (the marker that userspace runs), mount
//      /proc and /sys;
//   2. disk: if /dev/vda exists, mount it read-only as ext2 on /mnt and
//      print "tandem-init: disk: <first line of /mnt/tandem.txt>";
//   3. network: if tandem_ip=ADDR/PREFIX and tandem_peer=ADDR:PORT are in
//      the environment (the kernel passes unknown name=value parameters
//      without a dot to init that way), configure eth0, send the UDP
//      datagram "ping from tandem-init" to the peer until it answers (at
//      most 10 s) and print "tandem-init: net: <answer>"; with tandem_ip
//      alone, only configure eth0 and print "tandem-init: net: eth0 up at
//      <ADDR/PREFIX>";
//   4. channel: if /dev/hvc0 exists, write "tandem-init: hello over
//      virtio-console" to it and print "tandem-init: hvc0: ok";
//   5. rng: if /dev/hwrng exists, read 16 bytes from it and print
//      "tandem-init: rng: 16 bytes";
//   6. print "tandem-init: done", sync and reboot.
//
// A step that fails prints "tandem-init: <step>: FAIL <reason>" and the
// others still run.
//
// With tandem_loop=DEVICE on the command line, the disk step is replaced
// by a loop that never ends, for snapshot tests: every 100 ms it counts,
// writes the count to the raw block device DEVICE and fsyncs, reads it
// back, and prints "tandem-init: tick <n> disk <count read back>" on the
// console and "tick <n>" on /dev/hvc0 if it exists. If the network step
// reached its peer, each tick also sends "tick-<n>" to it and adds
// " net <answer>" to the line ("none" after 2 s without one). With
// tandem_tcp=ADDR:PORT as well, the loop first opens one TCP connection to
// that address and keeps it for good: each tick writes "tcp-tick-<n>\n" on
// it, reads one line back and adds " tcp <answer>" ("none" after 500 ms,
// "closed" once the connection is gone). A line "stop" read from /dev/hvc0
// ends the loop: the init prints "tandem-init: stopped at <n>" and goes on
// to "done" and the reboot. A restored guest goes on counting from where
// its memory was, on the same TCP connection.
//
// With tandem_work=MIB, instead of the steps after rng, the init runs a
// memory-writing workload with the contents real programs have, for
// traffic measurements (tandem bench --traffic): a heap of MIB MiB split
// into text written as a log, records (counters, timestamps, names and
// pointers) updated in place, buffers zero-filled and partly refilled,
// and copies of the init's own code, copied around. It prints
// "tandem-init: work <seconds> <iterations>" every second (an iteration:
// 40 records, 2 KiB of log, every 8th a buffer, every 16th a code copy,
// then a 1 ms sleep), and stops like the loop ("stop" on /dev/hvc0) with
// "tandem-init: work stopped".
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <net/if.h>
#include <netinet/tcp.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <termios.h>
#include <time.h>
#include <poll.h>
#include <unistd.h>

__attribute__((format(printf, 1, 2))) static void say(const char *fmt, ...) {
	va_list ap;
	va_start(ap, fmt);
	printf("tandem-init: ");
	vprintf(fmt, ap);
	printf("\n");
	fflush(stdout);
	va_end(ap);
}

static int exists(const char *path) {
	struct stat st;
	return stat(path, &st) == 0;
}

static void disk(void) {
	if (!exists("/dev/vda"))
		return;
	if (mount("/dev/vda", "/mnt", "ext2", MS_RDONLY, NULL) != 0) {
		say("disk: FAIL mount /dev/vda: %s", strerror(errno));
		return;
	}
	FILE *f = fopen("/mnt/tandem.txt", "r");
	if (!f) {
		say("disk: FAIL open /mnt/tandem.txt: %s", strerror(errno));
		return;
	}
	char line[256] = "";
	if (!fgets(line, sizeof line, f))
		line[0] = 0;
	fclose(f);
	line[strcspn(line, "\n")] = 0;
	say("disk: %s", line);
}

static int ifreq_ioctl(int s, unsigned long req, struct ifreq *ifr, const char *what) {
	if (ioctl(s, req, ifr) != 0) {
		say("net: FAIL %s: %s", what, strerror(errno));
		return -1;
	}
	return 0;
}

// The configured network, kept for the counting loop: a UDP socket and
// the peer's address (net_sock < 0 when there is none).
static int net_sock = -1;
static struct sockaddr_in net_peer;
// ping_msg is what net() sends the peer until it answers.
static const char ping_msg[] = "ping from tandem-init";

static void network(void) {
	const char *ip = getenv("tandem_ip"), *peer = getenv("tandem_peer");
	if (!ip)
		return;
	char addr[64], paddr[64];
	snprintf(addr, sizeof addr, "%s", ip);
	snprintf(paddr, sizeof paddr, "%s", peer ? peer : "none:0");
	char *slash = strchr(addr, '/'), *colon = strchr(paddr, ':');
	if (!slash || !colon) {
		say("net: FAIL want tandem_ip=ADDR/PREFIX and tandem_peer=ADDR:PORT, got %s and %s", ip, peer);
		return;
	}
	*slash = 0;
	*colon = 0;
	int prefix = atoi(slash + 1);

	int s = socket(AF_INET, SOCK_DGRAM, 0);
	struct ifreq ifr;
	memset(&ifr, 0, sizeof ifr);
	strcpy(ifr.ifr_name, "eth0");
	struct sockaddr_in *sin = (struct sockaddr_in *)&ifr.ifr_addr;
	sin->sin_family = AF_INET;
	inet_pton(AF_INET, addr, &sin->sin_addr);
	if (ifreq_ioctl(s, SIOCSIFADDR, &ifr, "set address") != 0)
		return;
	sin->sin_addr.s_addr = htonl(prefix ? ~0u << (32 - prefix) : 0);
	if (ifreq_ioctl(s, SIOCSIFNETMASK, &ifr, "set netmask") != 0)
		return;
	if (ifreq_ioctl(s, SIOCGIFFLAGS, &ifr, "get flags") != 0)
		return;
	ifr.ifr_flags |= IFF_UP | IFF_RUNNING;
	if (ifreq_ioctl(s, SIOCSIFFLAGS, &ifr, "bring eth0 up") != 0)
		return;
	if (!peer) {
		say("net: eth0 up at %s", ip);
		close(s);
		return;
	}

	struct sockaddr_in to = {.sin_family = AF_INET, .sin_port = htons(atoi(colon + 1))};
	inet_pton(AF_INET, paddr, &to.sin_addr);
	struct timeval tv = {.tv_sec = 0, .tv_usec = 500000};
	setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
	for (int i = 0; i < 20; i++) {
		sendto(s, ping_msg, strlen(ping_msg), 0, (struct sockaddr *)&to, sizeof to);
		char buf[256];
		ssize_t n = recv(s, buf, sizeof buf - 1, 0);
		if (n > 0) {
			buf[n] = 0;
			say("net: %s", buf);
			net_sock = s;
			net_peer = to;
			return;
		}
	}
	say("net: FAIL no answer from %s", peer);
	close(s);
}

static void channel(void) {
	if (!exists("/dev/hvc0"))
		return;
	int fd = open("/dev/hvc0", O_WRONLY | O_NOCTTY);
	static const char msg[] = "tandem-init: hello over virtio-console\n";
	if (fd < 0 || write(fd, msg, sizeof msg - 1) != sizeof msg - 1) {
		say("hvc0: FAIL %s", strerror(errno));
	} else {
		say("hvc0: ok");
	}
	if (fd >= 0)
		close(fd);
}

static void rng(void) {
	if (!exists("/dev/hwrng"))
		return;
	int fd = open("/dev/hwrng", O_RDONLY);
	unsigned char b[16];
	ssize_t got = 0;
	while (fd >= 0 && got < (ssize_t)sizeof b) {
		ssize_t n = read(fd, b + got, sizeof b - got);
		if (n <= 0)
			break;
		got += n;
	}
	if (got == sizeof b)
		say("rng: 16 bytes");
	else
		say("rng: FAIL read /dev/hwrng: %s", strerror(errno));
	if (fd >= 0)
		close(fd);
}

// tcp_connect opens the loop's TCP connection to ADDR:PORT, or returns -1
// after saying why.
static int tcp_connect(const char *peer) {
	char addr[64];
	snprintf(addr, sizeof addr, "%s", peer);
	char *colon = strchr(addr, ':');
	if (!colon) {
		say("tcp: FAIL want tandem_tcp=ADDR:PORT, got %s", peer);
		return -1;
	}
	*colon = 0;
	struct sockaddr_in to = {.sin_family = AF_INET, .sin_port = htons(atoi(colon + 1))};
	inet_pton(AF_INET, addr, &to.sin_addr);
	int s = socket(AF_INET, SOCK_STREAM, 0);
	if (s < 0 || connect(s, (struct sockaddr *)&to, sizeof to) != 0) {
		say("tcp: FAIL connect %s: %s", peer, strerror(errno));
		if (s >= 0)
			close(s);
		return -1;
	}
	int one = 1;
	setsockopt(s, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
	struct timeval tv = {.tv_sec = 0, .tv_usec = 500000};
	setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
	say("tcp: connected to %s", peer);
	return s;
}

// tcp_line reads one line from s into buf (without the newline): 1 when a
// whole line came, 0 on a timeout, -1 once the connection is closed.
static int tcp_line(int s, char *buf, size_t size) {
	size_t n = 0;
	while (n + 1 < size) {
		ssize_t got = recv(s, buf + n, 1, 0);
		if (got == 0 || (got < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR))
			return -1;
		if (got < 0)
			return 0;
		if (buf[n] == '\n')
			break;
		n++;
	}
	buf[n] = 0;
	return 1;
}

// stop_asked reports whether the host wrote a line "stop" to hvc0.
static int stop_asked(int hvc) {
	static char line[16];
	static size_t n;
	struct pollfd p = {.fd = hvc, .events = POLLIN};
	while (hvc >= 0 && poll(&p, 1, 0) == 1 && (p.revents & POLLIN)) {
		char c;
		if (read(hvc, &c, 1) != 1)
			return 0;
		if (c == '\n' || c == '\r') {
			line[n] = 0;
			n = 0;
			if (strcmp(line, "stop") == 0)
				return 1;
		} else if (n + 1 < sizeof line) {
			line[n++] = c;
		}
	}
	return 0;
}

static void counter_loop(const char *dev) {
	int disk = open(dev, O_RDWR);
	if (disk < 0) {
		say("loop: FAIL open %s: %s", dev, strerror(errno));
		return;
	}
	int hvc = open("/dev/hvc0", O_RDWR | O_NOCTTY | O_NONBLOCK);
	const char *tcp_peer = getenv("tandem_tcp");
	int tcp = tcp_peer ? tcp_connect(tcp_peer) : -1;
	if (net_sock >= 0) {
		// A tick's echo crosses the emulated guest kernel twice: on a
		// busy host that can take longer than the ping's 500 ms.
		struct timeval tv = {.tv_sec = 2, .tv_usec = 0};
		setsockopt(net_sock, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
	}
	for (unsigned long n = 1;; n++) {
		if (stop_asked(hvc)) {
			say("stopped at %lu", n - 1);
			break;
		}
		char out[32] = "", in[32] = "";
		snprintf(out, sizeof out, "%lu", n);
		if (pwrite(disk, out, sizeof out, 0) != sizeof out || fsync(disk) != 0) {
			say("loop: FAIL write %s: %s", dev, strerror(errno));
		} else if (pread(disk, in, sizeof in, 0) != sizeof in) {
			say("loop: FAIL read %s: %s", dev, strerror(errno));
		}
		in[sizeof in - 1] = 0;
		char line[160];
		int len = snprintf(line, sizeof line, "tick %lu disk %s", n, in);
		if (net_sock >= 0) {
			char msg[32], answer[64] = "";
			int mlen = snprintf(msg, sizeof msg, "tick-%lu", n);
			sendto(net_sock, msg, mlen, 0, (struct sockaddr *)&net_peer, sizeof net_peer);
			// The ping may have been sent more than once (an answer
			// slower than its 500 ms timeout), and an earlier tick may
			// have given up on its answer: late echoes of either are not
			// this tick's answer, which ends with this tick's message.
			ssize_t got;
			do {
				got = recv(net_sock, answer, sizeof answer - 1, 0);
				answer[got > 0 ? got : 0] = 0;
			} while (got > 0 && (got < mlen || strcmp(answer + got - mlen, msg) != 0));
			for (char *c = answer; *c; c++)
				if (*c == ' ' || *c == '\n')
					*c = '-';
			if (got <= 0)
				strcpy(answer, "none");
			len += snprintf(line + len, sizeof line - len, " net %s", answer);
		}
		if (tcp_peer) {
			char msg[32], answer[64] = "none";
			int mlen = snprintf(msg, sizeof msg, "tcp-tick-%lu\n", n);
			if (tcp < 0 || send(tcp, msg, mlen, MSG_NOSIGNAL) != mlen) {
				strcpy(answer, "closed");
			} else {
				int r = tcp_line(tcp, answer, sizeof answer);
				if (r < 0)
					strcpy(answer, "closed");
				else if (r == 0)
					strcpy(answer, "none");
				for (char *c = answer; *c; c++)
					if (*c == ' ')
						*c = '-';
			}
			if (strcmp(answer, "closed") == 0 && tcp >= 0) {
				close(tcp);
				tcp = -1;
			}
			snprintf(line + len, sizeof line - len, " tcp %s", answer);
		}
		say("%s", line);
		if (hvc >= 0)
			dprintf(hvc, "tick %lu\n", n);
		struct timespec ts = {.tv_sec = 0, .tv_nsec = 100 * 1000 * 1000};
		nanosleep(&ts, NULL);
	}
	if (tcp >= 0)
		close(tcp);
	if (hvc >= 0)
		close(hvc);
	close(disk);
}

// The key-value store's disk layout: from kvBase, kvSlots slots of
// kvSlotSize bytes, each a NUL-padded key, a NUL-padded value, found by
// linear probing from the key's hash.
enum { kvBase = 4096, kvSlots = 1024, kvSlotSize = 512, kvKeyMax = 63, kvValueMax = 400 };

struct kv_slot {
	char key[kvKeyMax + 1];
	char value[kvSlotSize - kvKeyMax - 1];
};

static unsigned kv_hash(const char *k) {
	unsigned h = 2166136261u;
	for (; *k; k++)
		h = (h ^ (unsigned char)*k) * 16777619u;
	return h;
}

// kv_find returns the slot holding key, or the free slot where it goes,
// or -1 when the store is full or the disk fails; *found says which.
static int kv_find(int disk, const char *key, struct kv_slot *slot, int *found) {
	unsigned h = kv_hash(key);
	for (int i = 0; i < kvSlots; i++) {
		int idx = (h + i) % kvSlots;
		if (pread(disk, slot, sizeof *slot, kvBase + (off_t)idx * kvSlotSize) != sizeof *slot)
			return -1;
		if (slot->key[0] == 0 || strncmp(slot->key, key, sizeof slot->key) == 0) {
			*found = slot->key[0] != 0;
			return idx;
		}
	}
	return -1;
}

// kv_request answers one request line into out.
static void kv_request(int disk, char *line, char *out, size_t size) {
	char *cmd = strtok(line, " "), *key = strtok(NULL, " "), *value = strtok(NULL, " ");
	struct kv_slot slot;
	int found = 0, idx;
	if (!cmd || !key || strlen(key) > kvKeyMax) {
		snprintf(out, size, "ERR want PUT <key> <value> or GET <key>, keys up to %d bytes\n", kvKeyMax);
	} else if (strcmp(cmd, "PUT") == 0) {
		if (!value || strlen(value) > kvValueMax) {
			snprintf(out, size, "ERR want a value of 1 to %d bytes\n", kvValueMax);
		} else if ((idx = kv_find(disk, key, &slot, &found)) < 0) {
			snprintf(out, size, "ERR store full or disk failing\n");
		} else {
			memset(&slot, 0, sizeof slot);
			snprintf(slot.key, sizeof slot.key, "%s", key);
			snprintf(slot.value, sizeof slot.value, "%s", value);
			if (pwrite(disk, &slot, sizeof slot, kvBase + (off_t)idx * kvSlotSize) != sizeof slot || fsync(disk) != 0)
				snprintf(out, size, "ERR write: %s\n", strerror(errno));
			else
				snprintf(out, size, "OK\n");
		}
	} else if (strcmp(cmd, "GET") == 0) {
		if (kv_find(disk, key, &slot, &found) < 0 || !found)
			snprintf(out, size, "NOTFOUND\n");
		else
			snprintf(out, size, "VALUE %.*s\n", (int)sizeof slot.value - 1, slot.value);
	} else {
		snprintf(out, size, "ERR unknown command %s\n", cmd);
	}
}

// serve_lines serves a line protocol on TCP port for good: one poll loop
// over the listening socket and up to 16 clients, each with a line buffer;
// answer turns each request line into its answer. name prefixes the
// "listening" line.
static void serve_lines(const char *name, int port, void (*answer)(char *line, char *out, size_t size)) {
	int ls = socket(AF_INET, SOCK_STREAM, 0);
	int one = 1;
	setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
	struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons(port), .sin_addr.s_addr = htonl(INADDR_ANY)};
	if (ls < 0 || bind(ls, (struct sockaddr *)&addr, sizeof addr) != 0 || listen(ls, 16) != 0) {
		say("%s: FAIL listen on port %d: %s", name, port, strerror(errno));
		_exit(1);
	}
	say("%s: listening on %d", name, port);
	enum { maxClients = 16, lineMax = 512 };
	struct pollfd fds[1 + maxClients];
	static char lines[maxClients][lineMax];
	size_t used[maxClients] = {0};
	fds[0] = (struct pollfd){.fd = ls, .events = POLLIN};
	for (int i = 1; i <= maxClients; i++)
		fds[i] = (struct pollfd){.fd = -1, .events = POLLIN};
	for (;;) {
		if (poll(fds, 1 + maxClients, -1) < 0)
			continue;
		if (fds[0].revents & POLLIN) {
			int c = accept(ls, NULL, NULL);
			int slot = 0;
			for (int i = 1; i <= maxClients && c >= 0 && !slot; i++)
				if (fds[i].fd < 0)
					slot = i;
			if (slot) {
				setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
				fds[slot].fd = c;
				used[slot - 1] = 0;
			} else if (c >= 0) {
				close(c);
			}
		}
		for (int i = 1; i <= maxClients; i++) {
			if (fds[i].fd < 0 || !(fds[i].revents & (POLLIN | POLLHUP | POLLERR)))
				continue;
			char *buf = lines[i - 1];
			ssize_t n = read(fds[i].fd, buf + used[i - 1], lineMax - 1 - used[i - 1]);
			if (n <= 0) {
				close(fds[i].fd);
				fds[i].fd = -1;
				continue;
			}
			used[i - 1] += n;
			char *nl;
			while ((nl = memchr(buf, '\n', used[i - 1])) != NULL) {
				*nl = 0;
				char out[lineMax];
				answer(buf, out, sizeof out);
				size_t rest = used[i - 1] - (nl + 1 - buf);
				memmove(buf, nl + 1, rest);
				used[i - 1] = rest;
				if (send(fds[i].fd, out, strlen(out), MSG_NOSIGNAL) < 0)
					break;
			}
			if (used[i - 1] == lineMax - 1) { // a line too long: drop the client
				close(fds[i].fd);
				fds[i].fd = -1;
			}
		}
	}
}

// The key-value store's disk, for kv_answer.
static int kv_disk = -1;

static void kv_answer(char *line, char *out, size_t size) { kv_request(kv_disk, line, out, size); }

// kv_serve runs the key-value store on port, kept on dev, for good.
static void kv_serve(const char *dev, int port) {
	if ((kv_disk = open(dev, O_RDWR)) < 0) {
		say("kv: FAIL open %s: %s", dev, strerror(errno));
		_exit(1);
	}
	serve_lines("kv", port, kv_answer);
}

// The counter of tandem_counter, in memory.
static unsigned long counter_value;

static void counter_answer(char *line, char *out, size_t size) {
	if (strncmp(line, "INC", 3) == 0)
		snprintf(out, size, "OK %lu\n", ++counter_value);
	else if (strcmp(line, "GET") == 0)
		snprintf(out, size, "VALUE %lu\n", counter_value);
	else
		snprintf(out, size, "ERR want INC <id> or GET\n");
}

// counter_serve answers INC and GET on /dev/hvc0 for good.
static void counter_serve(void) {
	int hvc = open("/dev/hvc0", O_RDWR | O_NOCTTY);
	if (hvc < 0) {
		say("counter: FAIL open /dev/hvc0: %s", strerror(errno));
		return;
	}
	// Raw: no echo of the requests, no CR added to the answers.
	struct termios tio;
	if (tcgetattr(hvc, &tio) == 0) {
		cfmakeraw(&tio);
		tcsetattr(hvc, TCSANOW, &tio);
	}
	say("counter: ready");
	char line[128];
	size_t n = 0;
	for (;;) {
		char c;
		ssize_t got = read(hvc, &c, 1);
		if (got < 0 && errno == EINTR)
			continue;
		if (got <= 0) {
			// No host end yet, or it went away: wait for one.
			struct timespec ts = {.tv_sec = 0, .tv_nsec = 10 * 1000 * 1000};
			nanosleep(&ts, NULL);
			continue;
		}
		if (c != '\n') {
			if (n + 1 < sizeof line)
				line[n++] = c;
			continue;
		}
		line[n] = 0;
		n = 0;
		char out[64];
		counter_answer(line, out, sizeof out);
		if (write(hvc, out, strlen(out)) < 0)
			continue;
	}
}

// work_rand is a xorshift generator: the workload needs no quality, only
// speed and no system call.
static unsigned long long work_state = 88172645463325252ULL;
static unsigned long long work_rand(void) {
	work_state ^= work_state << 13;
	work_state ^= work_state >> 7;
	work_state ^= work_state << 17;
	return work_state;
}

struct work_record {
	unsigned long long id, counter;
	double value;
	long long stamp;
	struct work_record *next;
	char name[24];
};

static void work_text(char *dst, size_t n) {
	static const char *words[] = {"the", "replica", "epoch", "page", "of", "and", "to", "a", "commit",
		"in", "guest", "memory", "is", "that", "for", "link", "primary", "it", "with", "as", "dirty",
		"on", "be", "state", "at", "by", "this", "from", "output", "request", "server", "client"};
	size_t i = 0;
	while (i < n) {
		const char *w = words[work_rand() % (sizeof words / sizeof words[0])];
		while (*w && i < n)
			dst[i++] = *w++;
		if (i < n)
			dst[i++] = (work_rand() % 12 == 0) ? '\n' : ' ';
	}
}

static void work_loop(int mib) {
	size_t size = (size_t)mib << 20, quarter = size / 4;
	char *heap = malloc(size);
	if (!heap || mib < 4) {
		say("work: FAIL a heap of %d MiB", mib);
		return;
	}
	char *log = heap, *recs = heap + quarter, *bufs = heap + 2 * quarter, *code = heap + 3 * quarter;
	size_t nrec = quarter / sizeof(struct work_record), logpos = 0;
	struct work_record *r = (struct work_record *)recs;
	for (size_t i = 0; i < nrec; i++) {
		r[i].id = i;
		r[i].next = &r[(i * 7 + 1) % nrec];
		snprintf(r[i].name, sizeof r[i].name, "record-%u", (unsigned)i);
	}
	// The init's own code, repeated over the last quarter.
	int self = open("/init", O_RDONLY);
	ssize_t got = self >= 0 ? read(self, code, quarter) : -1;
	if (self >= 0)
		close(self);
	for (size_t off = got > 0 ? (size_t)got : quarter; off < quarter; off += (size_t)got)
		memcpy(code + off, code, off + (size_t)got <= quarter ? (size_t)got : quarter - off);
	int hvc = open("/dev/hvc0", O_RDWR | O_NOCTTY | O_NONBLOCK);
	struct timespec t0, now, nap = {.tv_nsec = 1000000};
	clock_gettime(CLOCK_MONOTONIC, &t0);
	long long said = 0;
	for (unsigned long long it = 1;; it++) {
		clock_gettime(CLOCK_MONOTONIC, &now);
		for (int k = 0; k < 40; k++) { // records updated in place
			struct work_record *x = &r[work_rand() % nrec];
			x->counter++;
			x->value += 0.5;
			x->stamp = now.tv_sec * 1000000000LL + now.tv_nsec;
			x->next = &r[work_rand() % nrec];
		}
		work_text(log + logpos, 2048); // a log that wraps
		logpos = (logpos + 2048) % (quarter - 2048);
		if (it % 8 == 0) { // a buffer taken again: zeroed, partly filled
			char *b = bufs + (work_rand() % (quarter / 65536)) * 65536;
			memset(b, 0, 65536);
			work_text(b, 1024 + work_rand() % 4096);
		}
		if (it % 16 == 0) { // code copied from one place to another
			size_t from = (work_rand() % (quarter / 4096 - 4)) * 4096, to = (work_rand() % (quarter / 4096 - 4)) * 4096;
			memmove(code + to, code + from, 16384);
		}
		nanosleep(&nap, NULL);
		if (now.tv_sec - t0.tv_sec > said) {
			said = now.tv_sec - t0.tv_sec;
			say("work %lld %llu", said, it);
			if (stop_asked(hvc)) {
				say("work stopped");
				return;
			}
		}
	}
}

int main(void) {
	mount("devtmpfs", "/dev", "devtmpfs", 0, NULL);
	int fd = open("/dev/console", O_RDWR);
	if (fd >= 0) {
		dup2(fd, 0);
		dup2(fd, 1);
		dup2(fd, 2);
		if (fd > 2)
			close(fd);
	}
	say("up");
	mount("proc", "/proc", "proc", 0, NULL);
	mount("sysfs", "/sys", "sysfs", 0, NULL);
	const char *loop = getenv("tandem_loop");
	if (!loop)
		disk();
	network();
	channel();
	rng();
	const char *kv = getenv("tandem_kv"), *counter, *work = getenv("tandem_work");
	if (work)
		work_loop(atoi(work));
	if (loop && kv && fork() == 0)
		kv_serve(loop, atoi(kv));
	if (loop)
		counter_loop(loop);
	else if ((counter = getenv("tandem_counter")) != NULL && strncmp(counter, "tcp:", 4) == 0)
		serve_lines("counter", atoi(counter + 4), counter_answer);
	else if (counter)
		counter_serve();
	say("done");
	sync();
	reboot(RB_AUTOBOOT);
	for (;;)
		pause();
}
