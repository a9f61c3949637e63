#include "serve/connection_guard.h"

#include <dlfcn.h>
#include <httplib.h>
#include <sys/socket.h>

#include <cstring>

namespace {

// The socket accept() returned last on this thread. httplib's listening loop calls accept() and
// then, on the same thread, enqueues the connection's job: the queue reads this to learn which
// socket the job serves (httplib hands the queue a closure only).
thread_local int t_last_accepted = -1;

}  // namespace

// accept() as the C library's, noting the socket for the task queue above. Defined in the
// executable, it is the one httplib's shared library binds to.
extern "C" int accept(int fd, struct sockaddr* addr, socklen_t* len) {
  using AcceptFn = int (*)(int, struct sockaddr*, socklen_t*);
  static const AcceptFn real = reinterpret_cast<AcceptFn>(dlsym(RTLD_NEXT, "accept"));
  if (real == nullptr) {
    errno = ENOSYS;
    return -1;
  }
  const int s = real(fd, addr, len);
  t_last_accepted = s;
  return s;
}

namespace eigenkv::serve {

using Clock = std::chrono::steady_clock;

struct ConnectionGuard::Connection {
  int fd = -1;
  sockaddr_storage peer{};  // to tell this connection from a later one given the same fd
  socklen_t peer_len = 0;
  bool reading = true;
  bool shut = false;
  Clock::time_point since;  // start of the current phase
  std::list<Connection*>::iterator at;
};

namespace {

thread_local ConnectionGuard* t_guard = nullptr;
thread_local ConnectionGuard::Connection* t_connection = nullptr;

}  // namespace

class GuardedQueue : public httplib::TaskQueue {
 public:
  GuardedQueue(ConnectionGuard& guard, int threads) : guard_(guard), pool_(threads) {}
  void enqueue(std::function<void()> fn) override {
    const int fd = t_last_accepted;
    t_last_accepted = -1;
    pool_.enqueue(guard_.wrap(fd, std::move(fn)));
  }
  void shutdown() override { pool_.shutdown(); }

 private:
  ConnectionGuard& guard_;
  httplib::ThreadPool pool_;
};

ConnectionGuard::ConnectionGuard(ConnectionGuardOptions options) : options_(options) {
  watchdog_ = std::thread([this] { watch(); });
}

ConnectionGuard::~ConnectionGuard() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stop_ = true;
  }
  wake_.notify_all();
  watchdog_.join();
}

httplib::TaskQueue* ConnectionGuard::queue(int threads) { return new GuardedQueue(*this, threads); }

std::function<void()> ConnectionGuard::wrap(int fd, std::function<void()> job) {
  if (fd < 0) return job;  // no socket known: nothing to guard
  return [this, fd, job = std::move(job)] {
    Connection c;
    c.fd = fd;
    c.peer_len = sizeof(c.peer);
    if (getpeername(fd, reinterpret_cast<sockaddr*>(&c.peer), &c.peer_len) != 0) c.peer_len = 0;
    enter(c);
    t_guard = this;
    t_connection = &c;
    job();  // serves the connection's requests, then closes the socket
    t_connection = nullptr;
    t_guard = nullptr;
    leave(c);
  };
}

void ConnectionGuard::enter(Connection& c) {
  std::lock_guard<std::mutex> lock(mutex_);
  ++seen_;
  c.since = Clock::now();
  c.at = live_.insert(live_.end(), &c);
  ++reading_;
  // Over the limit: the connection reading longest goes (never the new one: it has had no time).
  // Those already shut down still count in reading_ until their threads leave; they do not here.
  int open_reading = 0;
  for (const Connection* o : live_) open_reading += o->reading && !o->shut;
  while (open_reading > options_.max_reading) {
    Connection* oldest = nullptr;
    for (Connection* o : live_) {
      if (o != &c && o->reading && !o->shut && (!oldest || o->since < oldest->since)) oldest = o;
    }
    if (!oldest) break;
    shut_down(*oldest);
    ++evicted_;
    --open_reading;
  }
  wake_.notify_all();
}

void ConnectionGuard::leave(Connection& c) {
  std::lock_guard<std::mutex> lock(mutex_);
  if (c.reading) --reading_;
  live_.erase(c.at);
}

void ConnectionGuard::set_reading(Connection& c, bool reading) {
  std::lock_guard<std::mutex> lock(mutex_);
  if (c.reading == reading) return;
  c.reading = reading;
  c.since = Clock::now();
  reading_ += reading ? 1 : -1;
  wake_.notify_all();
}

void ConnectionGuard::request_read() {
  if (t_guard && t_connection) t_guard->set_reading(*t_connection, false);
}

void ConnectionGuard::response_written() {
  if (t_guard && t_connection) t_guard->set_reading(*t_connection, true);
}

void ConnectionGuard::shut_down(Connection& c) {
  if (c.shut) return;
  c.shut = true;
  // httplib closes the socket just before the job returns; between the two, the number may
  // already name a new connection. Shut down only the peer this connection had.
  sockaddr_storage now{};
  socklen_t len = sizeof(now);
  if (getpeername(c.fd, reinterpret_cast<sockaddr*>(&now), &len) != 0) return;
  if (c.peer_len != 0 && (len != c.peer_len || std::memcmp(&now, &c.peer, len) != 0)) return;
  ::shutdown(c.fd, SHUT_RDWR);  // the blocked read returns 0; httplib closes the connection
}

void ConnectionGuard::watch() {
  const auto limit = std::chrono::duration_cast<Clock::duration>(
      std::chrono::duration<double>(options_.read_seconds));
  std::unique_lock<std::mutex> lock(mutex_);
  while (!stop_) {
    const Clock::time_point now = Clock::now();
    Clock::time_point next = now + std::chrono::seconds(1);
    for (Connection* c : live_) {
      if (!c->reading || c->shut) continue;
      if (now - c->since >= limit) {
        shut_down(*c);
        ++timed_out_;
      } else {
        next = std::min(next, c->since + limit);
      }
    }
    wake_.wait_until(lock, next + std::chrono::milliseconds(5));
  }
}

int64_t ConnectionGuard::timed_out() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return timed_out_;
}

int64_t ConnectionGuard::evicted() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return evicted_;
}

int64_t ConnectionGuard::seen() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return seen_;
}

}  // namespace eigenkv::serve
