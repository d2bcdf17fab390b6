/* A minimal sandbox ("pause") process for the e2e tests' local pause image.
 * Static, no libc features beyond signals: sleeps until SIGTERM or SIGINT,
 * reaps children (it is PID 1 of the pod when the pod has its own PID namespace). */
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static void on_stop(int sig) {
    (void)sig;
    _exit(0);
}

static void on_child(int sig) {
    (void)sig;
    while (waitpid(-1, NULL, WNOHANG) > 0) {
    }
}

int main(int argc, char **argv) {
    struct sigaction stop, child;
    memset(&stop, 0, sizeof(stop));
    stop.sa_handler = on_stop;
    memset(&child, 0, sizeof(child));
    child.sa_handler = on_child;
    child.sa_flags = SA_NOCLDSTOP | SA_RESTART;
    if (argc > 1 && strcmp(argv[1], "-v") == 0) {
        static const char v[] = "pause (kata-nri-manager e2e) 3.10\n";
        (void)!write(1, v, sizeof(v) - 1);
        return 0;
    }
    if (sigaction(SIGTERM, &stop, NULL) < 0 || sigaction(SIGINT, &stop, NULL) < 0 ||
        sigaction(SIGCHLD, &child, NULL) < 0) {
        return 1;
    }
    for (;;) {
        pause();
    }
    return 42;
}
