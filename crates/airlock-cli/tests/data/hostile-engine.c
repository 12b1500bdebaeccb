/*
 * A hostile engine process: started by `airlock serve` in llama-server's place (it takes
 * llama-server's arguments and answers GET /health on the unix socket named by --host), it
 * tries every escape an engine with code execution would, writes one line per attempt to
 * report.txt in its working directory (its runtime directory, the one place it may write),
 * and then serves /health until it is stopped.
 *
 * What it aims at is read from targets.txt beside the binary (key=value lines, written by
 * the test): server_pid (the airlock process; waited for), data_file (any number), outside
 * socket (a unix socket outside every allowed directory), tcp_port and udp_port (loopback
 * listeners), flood_seconds (a refusal flood's length).
 *
 * Each line: "<attempt> refused <detail>" or "<attempt> ALLOWED <detail>".
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/ptrace.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <sched.h>
#include <libgen.h>
#include <pthread.h>
#include <sys/wait.h>

static FILE *report;
static long server_pid;
static char data_files[16][512];
static int data_file_count;
static char outside_socket[108];
static int tcp_port, udp_port, flood_seconds;

static void say(const char *attempt, int allowed, const char *fmt, ...) {
    char detail[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(detail, sizeof detail, fmt, ap);
    va_end(ap);
    fprintf(report, "%s %s %s\n", attempt, allowed ? "ALLOWED" : "refused", detail);
    fflush(report);
}

static void read_targets(const char *self) {
    /* Waits for the test to name the server (it learns its pid only once it runs). */
    char path[4096];
    char copy[4096];
    snprintf(copy, sizeof copy, "%s", self);
    snprintf(path, sizeof path, "%s/targets.txt", dirname(copy));
    for (int tries = 0; tries < 1200; tries++) {
        FILE *f = fopen(path, "r");
        if (f) {
            char line[1024];
            int complete = 0;
            data_file_count = 0;
            while (fgets(line, sizeof line, f)) {
                line[strcspn(line, "\n")] = 0;
                if (!strcmp(line, "end")) complete = 1;
                char *value = strchr(line, '=');
                if (!value) continue;
                *value++ = 0;
                if (!strcmp(line, "server_pid")) server_pid = atol(value);
                else if (!strcmp(line, "data_file") && data_file_count < 16)
                    snprintf(data_files[data_file_count++], 512, "%s", value);
                else if (!strcmp(line, "outside_socket"))
                    snprintf(outside_socket, sizeof outside_socket, "%s", value);
                else if (!strcmp(line, "tcp_port")) tcp_port = atoi(value);
                else if (!strcmp(line, "udp_port")) udp_port = atoi(value);
                else if (!strcmp(line, "flood_seconds")) flood_seconds = atoi(value);
            }
            fclose(f);
            if (complete) return;
        }
        usleep(50000);
    }
    say("targets", 1, "targets.txt never completed at %s", path);
}

static void try_parent_descriptors(void) {
    say("getppid", getppid() != 0, "getppid() = %d", getppid());
    long pidfd = syscall(SYS_pidfd_open, server_pid, 0);
    say("pidfd_open(server)", pidfd >= 0, "pid %ld: %s", server_pid, pidfd >= 0 ? "opened" : strerror(errno));
    /* The seal's notification descriptor is one of the server's first descriptors. */
    int taken = 0, last_errno = 0;
    for (int fd = 0; fd < 256 && pidfd >= 0; fd++) {
        long got = syscall(SYS_pidfd_getfd, pidfd, fd, 0);
        if (got >= 0) { taken++; close(got); } else last_errno = errno;
    }
    say("pidfd_getfd(server)", taken > 0, "%d descriptors taken (%s)", taken,
        pidfd >= 0 ? strerror(last_errno) : "no pidfd");
    /* Without a pidfd of the server: any process it can name. */
    long own = syscall(SYS_pidfd_open, getpid(), 0);
    say("pidfd_open(self)", own >= 0, "%s", own >= 0 ? "opened" : strerror(errno));
}

static void try_server_memory(void) {
    long r = ptrace(PTRACE_SEIZE, server_pid, 0, 0);
    say("ptrace(server)", r == 0, "%s", r == 0 ? "seized" : strerror(errno));
    char buffer[64];
    struct iovec local = {buffer, sizeof buffer};
    struct iovec remote = {(void *)0x400000, sizeof buffer};
    ssize_t n = process_vm_readv(server_pid, &local, 1, &remote, 1, 0);
    /* EFAULT would mean the access check passed and only the address was wrong. */
    int passed = n >= 0 || errno == EFAULT;
    say("process_vm_readv(server)", passed, "%s", n >= 0 ? "read" : strerror(errno));
    const char *files[] = {"environ", "mem", "maps", "fd"};
    for (int i = 0; i < 4; i++) {
        char path[64];
        snprintf(path, sizeof path, "/proc/%ld/%s", server_pid, files[i]);
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        say("open(/proc/server)", fd >= 0, "%s: %s", path, fd >= 0 ? "opened" : strerror(errno));
        if (fd >= 0) close(fd);
    }
    int k = kill(server_pid, 0);
    say("kill(server)", k == 0, "signal 0 to %ld: %s", server_pid, k == 0 ? "delivered" : strerror(errno));
}

static void try_sockets(void) {
    int u = socket(AF_INET, SOCK_DGRAM, 0);
    if (u >= 0) {
        struct sockaddr_in to = {.sin_family = AF_INET, .sin_port = htons(udp_port)};
        to.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        ssize_t sent = sendto(u, "x", 1, 0, (struct sockaddr *)&to, sizeof to);
        say("udp", sent == 1, "socket made; sendto: %s", sent == 1 ? "sent" : strerror(errno));
        close(u);
    } else {
        say("udp", 0, "socket: %s", strerror(errno));
    }
    int raw = socket(AF_PACKET, SOCK_RAW, 0);
    say("packet socket", raw >= 0, "%s", raw >= 0 ? "made" : strerror(errno));
    int t = socket(AF_INET, SOCK_STREAM, 0);
    if (t >= 0) {
        struct sockaddr_in to = {.sin_family = AF_INET, .sin_port = htons(tcp_port)};
        to.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        int c = connect(t, (struct sockaddr *)&to, sizeof to);
        say("tcp", c == 0, "connect 127.0.0.1:%d: %s", tcp_port, c == 0 ? "connected" : strerror(errno));
        close(t);
    }
    /* A unix socket outside every allowed directory, directly and through a link in the
       engine's own runtime directory. */
    for (int via_link = 0; via_link < 2; via_link++) {
        struct sockaddr_un to = {.sun_family = AF_UNIX};
        if (via_link) {
            char here[4096];
            if (!getcwd(here, sizeof here)) here[0] = 0;
            snprintf(to.sun_path, sizeof to.sun_path, "%s/escape.sock", here);
            unlink(to.sun_path);
            if (symlink(outside_socket, to.sun_path) != 0) {
                say("unix socket through a link", 0, "symlink: %s", strerror(errno));
                continue;
            }
        } else {
            snprintf(to.sun_path, sizeof to.sun_path, "%s", outside_socket);
        }
        int s = socket(AF_UNIX, SOCK_STREAM, 0);
        int c = connect(s, (struct sockaddr *)&to, sizeof to);
        say(via_link ? "unix socket through a link" : "unix socket outside", c == 0, "%s: %s",
            to.sun_path, c == 0 ? "connected" : strerror(errno));
        close(s);
    }
}

static void try_files(void) {
    for (int i = 0; i < data_file_count; i++) {
        int r = open(data_files[i], O_RDONLY | O_CLOEXEC);
        say("read data file", r >= 0, "%s: %s", data_files[i], r >= 0 ? "opened" : strerror(errno));
        if (r >= 0) close(r);
        int w = open(data_files[i], O_RDWR | O_CLOEXEC);
        say("write data file", w >= 0, "%s: %s", data_files[i], w >= 0 ? "opened" : strerror(errno));
        if (w >= 0) close(w);
    }
    char tmp[64];
    snprintf(tmp, sizeof tmp, "/tmp/hostile-engine-%d", getpid());
    int f = open(tmp, O_CREAT | O_WRONLY | O_CLOEXEC, 0600);
    say("write /tmp", f >= 0, "%s: %s", tmp, f >= 0 ? "created" : strerror(errno));
    if (f >= 0) { close(f); unlink(tmp); }
}

static void try_other_architectures(void) {
    /* getpid through the 32-bit entry point and as an x32 call: another architecture's
       numbers, which a filter written for x86-64 alone would let pass unread. */
    long ret;
    __asm__ volatile("int $0x80" : "=a"(ret) : "a"(20L) : "memory");
    say("int 0x80", ret >= 0, "returned %ld", ret);
    long x32 = syscall(0x40000000L | SYS_getpid);
    say("x32 call", x32 >= 0, "%s", x32 >= 0 ? "answered" : strerror(errno));
}

static void try_kernel(void) {
    struct sock_filter allow = BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_USER_NOTIF);
    struct sock_fprog prog = {1, &allow};
    long l = syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_NEW_LISTENER, &prog);
    say("seccomp listener of its own", l >= 0, "%s", l >= 0 ? "installed" : strerror(errno));
    int u = unshare(CLONE_NEWUSER | CLONE_NEWNET);
    say("unshare", u == 0, "%s", u == 0 ? "new namespaces" : strerror(errno));
}

static void leave_a_survivor(void) {
    /* Its pid as the machine sees it (its own namespace calls it something else), so the
       test can look for it after the server has stopped. */
    int told[2];
    if (pipe(told) != 0) return;
    pid_t first = fork();
    if (first == 0) {
        setsid();
        if (fork() == 0) {
            prctl(PR_SET_NAME, "airlock-survivr");
            char self[32] = {0};
            ssize_t n = readlink("/proc/self", self, sizeof self - 1);
            ssize_t w = write(told[1], self, n > 0 ? n : 0);
            (void)w;
            close(told[1]);
            for (;;) pause();
        }
        _exit(0);
    }
    close(told[1]);
    char pid[32] = {0};
    ssize_t n = read(told[0], pid, sizeof pid - 1);
    close(told[0]);
    waitpid(first, NULL, 0);
    fprintf(report, "survivor-pid %s\n", n > 0 ? pid : "unknown");
    fflush(report);
    say("survivor", 0, "double-forked, setsid: must be gone once the server stops");
}

static void flood(void) {
    if (flood_seconds <= 0) return;
    long attempts = 0;
    time_t end = time(NULL) + flood_seconds;
    while (time(NULL) < end) {
        int s = socket(AF_INET, SOCK_DGRAM, 0);
        if (s >= 0) { close(s); say("flood", 1, "a socket was made"); return; }
        attempts++;
    }
    fprintf(report, "flood %ld\n", attempts);
    fflush(report);
}

static void *attack(void *self) {
    read_targets(self);
    fprintf(report, "pid %d\n", getpid());
    try_parent_descriptors();
    try_server_memory();
    try_sockets();
    try_files();
    try_kernel();
    try_other_architectures();
    leave_a_survivor();
    flood();
    fprintf(report, "done\n");
    fflush(report);
    return NULL;
}

/* Answers health checks at once (the server waits for them before it serves, and so before
   the test can name it), while the attacks run on a thread of their own. */
static void serve_health(const char *path, char *self) {
    int listener = socket(AF_UNIX, SOCK_STREAM, 0);
    struct sockaddr_un at = {.sun_family = AF_UNIX};
    snprintf(at.sun_path, sizeof at.sun_path, "%s", path);
    unlink(path);
    if (bind(listener, (struct sockaddr *)&at, sizeof at) != 0 || listen(listener, 16) != 0) {
        fprintf(report, "listen failed: %s\n", strerror(errno));
        fflush(report);
        exit(1);
    }
    pthread_t attacker;
    pthread_create(&attacker, NULL, attack, self);
    for (;;) {
        int c = accept(listener, NULL, NULL);
        if (c < 0) continue;
        char request[4096];
        ssize_t n = read(c, request, sizeof request - 1);
        request[n > 0 ? n : 0] = 0;
        const char *reply = strncmp(request, "GET /health", 11) == 0
            ? "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 15\r\nConnection: close\r\n\r\n{\"status\":\"ok\"}"
            : "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
        ssize_t w = write(c, reply, strlen(reply));
        (void)w;
        close(c);
    }
}

static void stop_now(int signal) {
    (void)signal;
    _exit(0);
}

int main(int argc, char **argv) {
    const char *socket_path = NULL;
    for (int i = 1; i + 1 < argc; i++)
        if (!strcmp(argv[i], "--host")) socket_path = argv[i + 1];
    report = fopen("report.txt", "w");
    if (!report || !socket_path) return 2;
    /* PID 1 of a namespace takes only the signals it handles. */
    struct sigaction stop = {.sa_handler = stop_now};
    sigaction(SIGTERM, &stop, NULL);
    serve_health(socket_path, argv[0]);
    return 0;
}
