// Noticing that an HTTP client has gone away while its request is still being generated.
// cpp-httplib 0.11 (Debian 12) does not hand handlers their connection, so the handler finds
// its own socket among the process's descriptors by the client's address and port.
#pragma once

#include <string>

namespace eigenkv::serve {

class PeerSocket {
 public:
  // The connected socket whose local port is `local_port` and whose peer is remote_addr:
  // remote_port; when none is found, closed() always answers false.
  PeerSocket(const std::string& remote_addr, int remote_port, int local_port);
  // True once the peer has shut down or reset the connection (a non-blocking poll).
  bool closed() const;

 private:
  int fd_ = -1;
};

}  // namespace eigenkv::serve
