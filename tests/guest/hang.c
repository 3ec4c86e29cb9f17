/* A guest /init that never finishes booting: it sleeps forever. */
#include <unistd.h>

int main(void)
{
	for (;;)
		pause();
}
