/* A D-Bus subscriber that never reads: it connects to the guest's system
 * bus, says Hello, asks for every signal (AddMatch type='signal'), waits
 * for that call's reply, and from then on reads nothing, in a child that
 * outlives this program; the parent exits 0 once the match is in place.
 * Raw protocol (no libdbus): the tests' own program, static. */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <fcntl.h>
#include <sys/socket.h>
#include <sys/un.h>

static unsigned char msg[1024];
static size_t len;

static void pad(size_t to)
{
	while (len % to)
		msg[len++] = 0;
}

static void u32(uint32_t v)
{
	pad(4);
	memcpy(msg + len, &v, 4);
	len += 4;
}

static void str(const char *s)
{
	u32(strlen(s));
	memcpy(msg + len, s, strlen(s) + 1);
	len += strlen(s) + 1;
}

static void field(unsigned char code, char type, const char *value)
{
	pad(8);
	msg[len++] = code;
	msg[len++] = 1;
	msg[len++] = type;
	msg[len++] = 0;
	if (type == 'g') {
		msg[len++] = strlen(value);
		memcpy(msg + len, value, strlen(value) + 1);
		len += strlen(value) + 1;
	} else {
		str(value);
	}
}

/* A method call on the bus, with one string argument if arg is given. */
static size_t call(uint32_t serial, const char *member, const char *arg)
{
	size_t fields_at, body_at;
	uint32_t n;

	len = 0;
	memcpy(msg, "l\1\0\1", 4);
	len = 4;
	u32(0);			/* body length, below */
	u32(serial);
	u32(0);			/* fields' length, below */
	fields_at = len;
	field(1, 'o', "/org/freedesktop/DBus");
	field(6, 's', "org.freedesktop.DBus");
	field(2, 's', "org.freedesktop.DBus");
	field(3, 's', member);
	if (arg)
		field(8, 'g', "s");
	n = len - fields_at;
	memcpy(msg + 12, &n, 4);
	pad(8);
	body_at = len;
	if (arg)
		str(arg);
	n = len - body_at;
	memcpy(msg + 4, &n, 4);
	return len;
}

static int send_all(int fd, const void *p, size_t n)
{
	return write(fd, p, n) == (ssize_t)n ? 0 : -1;
}

/* Reads until `serial`'s reply has come (its REPLY_SERIAL bytes appear). */
static int await_reply(int fd, uint32_t serial)
{
	unsigned char buf[8192];
	size_t have = 0;
	unsigned char needle[8] = { 5, 1, 'u', 0 };

	memcpy(needle + 4, &serial, 4);
	while (have < sizeof(buf)) {
		ssize_t n = read(fd, buf + have, sizeof(buf) - have);

		if (n <= 0)
			return -1;
		have += n;
		if (memmem(buf, have, needle, 8))
			return 0;
	}
	return -1;
}

int main(void)
{
	struct sockaddr_un addr = { .sun_family = AF_UNIX };
	char line[256];
	int fd;
	pid_t pid;

	strcpy(addr.sun_path, "/run/dbus/system_bus_socket");
	fd = socket(AF_UNIX, SOCK_STREAM, 0);
	if (fd < 0 || connect(fd, (struct sockaddr *)&addr, sizeof(addr)))
		return 2;
	/* EXTERNAL as uid 0 ("30"), then the message stream. */
	if (send_all(fd, "\0AUTH EXTERNAL 30\r\n", 19) || read(fd, line, sizeof(line)) < 2 ||
	    strncmp(line, "OK ", 3) || send_all(fd, "BEGIN\r\n", 7))
		return 3;
	if (send_all(fd, msg, call(1, "Hello", NULL)) || await_reply(fd, 1))
		return 4;
	if (send_all(fd, msg, call(2, "AddMatch", "type='signal'")) || await_reply(fd, 2))
		return 5;
	pid = fork();
	if (pid < 0)
		return 7;
	if (pid == 0) {
		int null = open("/dev/null", O_RDWR);

		dup2(null, 0);
		dup2(null, 1);
		dup2(null, 2);
		for (;;)
			pause();
	}
	printf("subscribed, reading nothing from now on (pid %d)\n", pid);
	return 0;
}
