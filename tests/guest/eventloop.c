/*
 * What a common event loop needs from the kernel, each used for real:
 * epoll over an eventfd, a timerfd, a signalfd, an inotify watch and an
 * AF_UNIX socket pair. Prints one line per facility and exits 0 only if
 * every one delivered its event through epoll.
 */
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/inotify.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <fcntl.h>
#include <unistd.h>

static int check(const char *what, int ok)
{
	printf("%s %s\n", what, ok ? "ok" : "FAILED");
	return ok ? 0 : 1;
}

static int ready(int ep, int fd)
{
	struct epoll_event ev = { .events = EPOLLIN, .data.fd = fd };
	struct epoll_event got;

	if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) < 0)
		return 0;
	if (epoll_wait(ep, &got, 1, 5000) != 1)
		return 0;
	epoll_ctl(ep, EPOLL_CTL_DEL, fd, NULL);
	return got.data.fd == fd;
}

int main(void)
{
	int failed = 0, ep = epoll_create1(EPOLL_CLOEXEC);
	uint64_t one = 1;
	sigset_t mask;
	int efd, tfd, sfd, ifd, pair[2], file;
	struct itimerspec soon = { .it_value = { .tv_nsec = 1000000 } };

	failed |= check("epoll", ep >= 0);

	efd = eventfd(0, EFD_CLOEXEC);
	failed |= check("eventfd", efd >= 0 && write(efd, &one, sizeof(one)) == sizeof(one) && ready(ep, efd));

	tfd = timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC);
	failed |= check("timerfd", tfd >= 0 && timerfd_settime(tfd, 0, &soon, NULL) == 0 && ready(ep, tfd));

	sigemptyset(&mask);
	sigaddset(&mask, SIGUSR1);
	sigprocmask(SIG_BLOCK, &mask, NULL);
	sfd = signalfd(-1, &mask, SFD_CLOEXEC);
	failed |= check("signalfd", sfd >= 0 && raise(SIGUSR1) == 0 && ready(ep, sfd));

	ifd = inotify_init1(IN_CLOEXEC);
	failed |= check("inotify",
			ifd >= 0 && inotify_add_watch(ifd, "/tmp", IN_CREATE) >= 0 &&
			(file = open("/tmp/eventloop-probe", O_CREAT | O_WRONLY, 0600)) >= 0 &&
			ready(ep, ifd));

	failed |= check("af_unix",
			socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, pair) == 0 &&
			write(pair[0], "x", 1) == 1 && ready(ep, pair[1]));
	return failed;
}
