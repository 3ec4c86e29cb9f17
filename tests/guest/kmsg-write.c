/* Writes argv[1] to /dev/kmsg, as a guest program may: the bench must not
 * take user space's words for the kernel's. */
#include <fcntl.h>
#include <string.h>
#include <unistd.h>

int main(int argc, char **argv)
{
	int fd = open("/dev/kmsg", O_WRONLY);

	if (fd < 0 || argc < 2)
		return 1;
	return write(fd, argv[1], strlen(argv[1])) < 0;
}
