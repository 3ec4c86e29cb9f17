/* Leaves an orphan behind, as a program that starts a daemon does: prints
 * its child's pid and exits; the child, now PID 1's, exits 200 ms later. */
#include <stdio.h>
#include <unistd.h>

int main(void)
{
	pid_t child = fork();

	if (child < 0)
		return 1;
	if (child == 0) {
		/* Not the parent's stdout: the agent reads that to its end. */
		fclose(stdout);
		fclose(stderr);
		usleep(200 * 1000);
		_exit(0);
	}
	printf("%d\n", (int)child);
	return 0;
}
