/* Sends SIGKILL to every process whose /proc/PID/comm is argv[1]: the
 * tests' way to have a program of the guest's D-Bus side die. */
#include <dirent.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int main(int argc, char **argv)
{
	struct dirent *e;
	DIR *proc = opendir("/proc");
	int killed = 0;

	if (argc < 2 || !proc)
		return 2;
	while ((e = readdir(proc))) {
		char path[300], comm[64] = "";
		FILE *f;
		int pid = atoi(e->d_name);

		if (pid <= 1)
			continue;
		snprintf(path, sizeof(path), "/proc/%d/comm", pid);
		f = fopen(path, "r");
		if (!f)
			continue;
		if (fgets(comm, sizeof(comm), f))
			comm[strcspn(comm, "\n")] = '\0';
		fclose(f);
		if (!strcmp(comm, argv[1]) && !kill(pid, SIGKILL))
			killed++;
	}
	printf("killed %d\n", killed);
	return killed ? 0 : 1;
}
