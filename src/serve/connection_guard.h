// Bounds how long a connection may take to deliver a request and how many connections may be
// delivering at once, so that clients who trickle bytes (slowloris) cannot hold the HTTP threads.
//
// httplib gives each connection a thread of its pool for as long as the connection lives, and its
// read timeout is per recv(): a header line every two seconds keeps a thread forever, and 32 such
// connections took every thread of a `--parallel 8` server. The guard sees each connection from
// accept() to close (ConnectionGuard::queue wraps the pool's jobs) and keeps its phase:
//   reading  from the start of its job, and again after each response (keep-alive), until a
//            handler has the whole request (head and body): at most `read_seconds`, after which
//            the socket is shut down (the blocked read returns and httplib closes it);
//   handling from then until its response is written: not bounded here (--timeout is).
// At most `max_reading` connections may be reading at once: a new one over that evicts the one
// that has been reading longest, so trickling clients can hold only that many threads and the
// rest of the pool stays free for requests that arrive whole.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <list>
#include <mutex>
#include <thread>

namespace httplib {
class TaskQueue;
}

namespace eigenkv::serve {

struct ConnectionGuardOptions {
  double read_seconds = 20;  // to deliver one request, head and body
  int max_reading = 16;      // connections reading at once
};

class ConnectionGuard {
 public:
  explicit ConnectionGuard(ConnectionGuardOptions options);
  ~ConnectionGuard();
  ConnectionGuard(const ConnectionGuard&) = delete;
  ConnectionGuard& operator=(const ConnectionGuard&) = delete;

  // An httplib task queue of `threads` workers whose jobs (one per accepted connection) run
  // under this guard. The guard must outlive it.
  httplib::TaskQueue* queue(int threads);

  // On the thread that runs the connection (httplib's handlers and logger run there):
  // the handler has read the whole request; the response has been written.
  static void request_read();
  static void response_written();

  // Connections shut down so far: for reading too long, and evicted over max_reading.
  int64_t timed_out() const;
  int64_t evicted() const;
  // Connections the guard has seen (0 means the accept hook is not in effect).
  int64_t seen() const;

  struct Connection;

 private:
  friend class GuardedQueue;
  std::function<void()> wrap(int fd, std::function<void()> job);
  void enter(Connection& c);
  void leave(Connection& c);
  void set_reading(Connection& c, bool reading);
  void watch();
  // Shuts the connection's socket down unless it was already (mutex held).
  void shut_down(Connection& c);

  ConnectionGuardOptions options_;
  mutable std::mutex mutex_;
  std::condition_variable wake_;
  std::list<Connection*> live_;
  int reading_ = 0;
  int64_t timed_out_ = 0, evicted_ = 0, seen_ = 0;
  bool stop_ = false;
  std::thread watchdog_;
};

}  // namespace eigenkv::serve
