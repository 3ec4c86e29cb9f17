/*
 * A user's own kmessage listener, run in the guest by an exec step: it drops
 * to an unprivileged user, binds the 2004 group mask of KMSG_POWER (1 << 2)
 * on unit 31, and prints the first datagram it receives, escaped.
 */
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>
#include <linux/netlink.h>

int main(void)
{
	struct sockaddr_nl addr = { .nl_family = AF_NETLINK, .nl_groups = 1 << 2 };
	struct sockaddr_nl from;
	socklen_t from_len = sizeof(from);
	struct timeval timeout = { .tv_sec = 20 };
	unsigned char buf[8192];
	ssize_t n, i;
	int fd;

	if (setgid(65534) || setuid(65534)) {
		perror("setuid");
		return 2;
	}
	fd = socket(AF_NETLINK, SOCK_RAW, 31);
	if (fd < 0 || bind(fd, (struct sockaddr *)&addr, sizeof(addr))) {
		perror("netlink");
		return 3;
	}
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof(timeout));
	n = recvfrom(fd, buf, sizeof(buf), 0, (struct sockaddr *)&from, &from_len);
	if (n < 0) {
		perror("recvfrom");
		return 4;
	}
	printf("uid %d bytes %zd groups %#x pid %u\n", getuid(), n, from.nl_groups, from.nl_pid);
	for (i = 0; i < n; i++) {
		if (buf[i] == '\n')
			fputs("\\n", stdout);
		else if (buf[i] == 0)
			fputs("\\0", stdout);
		else
			putchar(buf[i]);
	}
	putchar('\n');
	return 0;
}
