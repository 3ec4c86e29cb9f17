/* Writes argv[1] bytes of 'x' to stdout: more than the agent keeps. */
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int main(int argc, char **argv)
{
	static char block[65536];
	long left = argc > 1 ? atol(argv[1]) : 0;

	memset(block, 'x', sizeof(block));
	while (left > 0) {
		ssize_t n = write(1, block, left < (long)sizeof(block) ? left : (long)sizeof(block));

		if (n <= 0)
			return 1;
		left -= n;
	}
	return 0;
}
