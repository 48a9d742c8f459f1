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
//      most 10 s) and print "tandem-init: net: <answer>";
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
// " net <answer>" to the line ("none" after 500 ms without one). A restored
// guest goes on counting from where its memory was.
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <net/if.h>
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
#include <time.h>
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

static void network(void) {
	const char *ip = getenv("tandem_ip"), *peer = getenv("tandem_peer");
	if (!ip || !peer)
		return;
	char addr[64], paddr[64];
	snprintf(addr, sizeof addr, "%s", ip);
	snprintf(paddr, sizeof paddr, "%s", peer);
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

	struct sockaddr_in to = {.sin_family = AF_INET, .sin_port = htons(atoi(colon + 1))};
	inet_pton(AF_INET, paddr, &to.sin_addr);
	struct timeval tv = {.tv_sec = 0, .tv_usec = 500000};
	setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
	static const char ping[] = "ping from tandem-init";
	for (int i = 0; i < 20; i++) {
		sendto(s, ping, sizeof ping - 1, 0, (struct sockaddr *)&to, sizeof to);
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

static void counter_loop(const char *dev) {
	int disk = open(dev, O_RDWR);
	if (disk < 0) {
		say("loop: FAIL open %s: %s", dev, strerror(errno));
		return;
	}
	int hvc = open("/dev/hvc0", O_WRONLY | O_NOCTTY);
	for (unsigned long n = 1;; n++) {
		char out[32] = "", in[32] = "";
		snprintf(out, sizeof out, "%lu", n);
		if (pwrite(disk, out, sizeof out, 0) != sizeof out || fsync(disk) != 0) {
			say("loop: FAIL write %s: %s", dev, strerror(errno));
		} else if (pread(disk, in, sizeof in, 0) != sizeof in) {
			say("loop: FAIL read %s: %s", dev, strerror(errno));
		}
		in[sizeof in - 1] = 0;
		char answer[64] = "";
		if (net_sock >= 0) {
			char msg[32];
			int len = snprintf(msg, sizeof msg, "tick-%lu", n);
			sendto(net_sock, msg, len, 0, (struct sockaddr *)&net_peer, sizeof net_peer);
			ssize_t got = recv(net_sock, answer, sizeof answer - 1, 0);
			answer[got > 0 ? got : 0] = 0;
			for (char *c = answer; *c; c++)
				if (*c == ' ' || *c == '\n')
					*c = '-';
			if (got <= 0)
				strcpy(answer, "none");
		}
		if (net_sock >= 0)
			say("tick %lu disk %s net %s", n, in, answer);
		else
			say("tick %lu disk %s", n, in);
		if (hvc >= 0)
			dprintf(hvc, "tick %lu\n", n);
		struct timespec ts = {.tv_sec = 0, .tv_nsec = 100 * 1000 * 1000};
		nanosleep(&ts, NULL);
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
	if (loop)
		counter_loop(loop);
	say("done");
	sync();
	reboot(RB_AUTOBOOT);
	for (;;)
		pause();
}
