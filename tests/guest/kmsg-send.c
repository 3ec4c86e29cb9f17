/* Sends argv[2] (with "\n" as a newline and a final NUL, as send_kmessage
 * frames it) to kmessage group argv[1] from user space, as root may: the
 * tests' way to put an object or signal word on the wire that the module
 * never sends, and see what kdbusd makes of it. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/socket.h>
#include <linux/netlink.h>

int main(int argc, char **argv)
{
	struct sockaddr_nl to = { .nl_family = AF_NETLINK };
	char payload[8192];
	size_t n = 0;
	const char *p;
	FILE *f;
	int unit, fd;

	if (argc < 3)
		return 2;
	f = fopen("/sys/module/kmessage/parameters/unit", "r");
	if (!f || fscanf(f, "%d", &unit) != 1)
		return 3;
	for (p = argv[2]; *p && n < sizeof(payload) - 1; p++) {
		if (p[0] == '\\' && p[1] == 'n') {
			payload[n++] = '\n';
			p++;
		} else {
			payload[n++] = *p;
		}
	}
	payload[n++] = '\0';
	fd = socket(AF_NETLINK, SOCK_RAW, unit);
	if (fd < 0)
		return 4;
	to.nl_groups = 1u << atoi(argv[1]);
	if (sendto(fd, payload, n, 0, (struct sockaddr *)&to, sizeof(to)) < 0) {
		/* The broadcast went out; only the kernel socket refused it. */
		perror("sendto");
	}
	return 0;
}
