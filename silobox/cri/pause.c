/* The pod holder: PID 1 of a pod sandbox's compute system.
 *
 * It keeps the pod's namespaces alive and does nothing else: it waits for SIGTERM or SIGINT
 * (then exits 0) and reaps every child it adopts, since a pod whose containers share its PID
 * namespace makes it the parent of their orphans. Built static by silobox/cri/pause.py. */
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

static void quit(int sig)
{
    (void)sig;
    _exit(0);
}

static void reap(int sig)
{
    (void)sig;
    while (waitpid(-1, NULL, WNOHANG) > 0)
        ;
}

int main(void)
{
    struct sigaction q = {0}, r = {0};

    q.sa_handler = quit;
    sigaction(SIGTERM, &q, NULL);
    sigaction(SIGINT, &q, NULL);
    r.sa_handler = reap;
    r.sa_flags = SA_NOCLDSTOP | SA_RESTART;
    sigaction(SIGCHLD, &r, NULL);
    for (;;)
        pause();
}
