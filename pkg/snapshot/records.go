package snapshot

import "time"

// ClockRecord is the one record of artifacts/clock.jsonl: the host's clocks,
// read back to back at the start of the snapshot.
type ClockRecord struct {
	// SystemTime is CLOCK_REALTIME in UTC, RFC 3339 with nanoseconds.
	SystemTime time.Time `json:"system_time"`
	// SystemTimeUnixNS is SystemTime in nanoseconds since the Unix epoch.
	SystemTimeUnixNS int64 `json:"system_time_unix_ns"`
	// MonotonicNS is CLOCK_MONOTONIC (time since boot, not counting
	// suspend), in nanoseconds.
	MonotonicNS int64 `json:"monotonic_ns"`
	// BoottimeNS is CLOCK_BOOTTIME (time since boot, counting suspend) in
	// nanoseconds; SystemTimeUnixNS minus BoottimeNS is the wall-clock
	// time of boot.
	BoottimeNS int64 `json:"boottime_ns"`
	// BootTime is the wall-clock time of boot, UTC: SystemTime minus
	// BoottimeNS. Process start times count from it rounded to the
	// nearest 10 ms (see ProcessRecord.StartTime).
	BootTime time.Time `json:"boot_time"`
	// Timezone is the local zone's abbreviation ("UTC", "CET").
	Timezone string `json:"timezone"`
	// UTCOffsetSeconds is the local zone's offset east of UTC at
	// SystemTime, in seconds.
	UTCOffsetSeconds int `json:"utc_offset_seconds"`
	// TZ is the agent's TZ environment variable; "" when unset.
	TZ string `json:"tz"`
	// LocaltimeLink is the target of the /etc/localtime symlink, "" when
	// not a link.
	LocaltimeLink string `json:"localtime_link"`
	// ControllerOffsetNS is the controller's clock minus the host's in
	// nanoseconds, null when not measured; ControllerOffsetError says why.
	ControllerOffsetNS *int64 `json:"controller_offset_ns"`
	// ControllerOffsetError says why ControllerOffsetNS is null.
	ControllerOffsetError string `json:"controller_offset_error,omitempty"`
}

// Identity identifies a host.
type Identity struct {
	// Hostname is the kernel's host name (uname(2) nodename).
	Hostname string `json:"hostname"`
	// MachineID is /etc/machine-id (machine-id(5)), 32 hex digits.
	MachineID string `json:"machine_id"`
	// BootID is /proc/sys/kernel/random/boot_id, a UUID that changes on
	// every boot.
	BootID string `json:"boot_id"`
	// Kernel is the kernel release, /proc/sys/kernel/osrelease.
	Kernel string `json:"kernel"`
}

// HostRecord is the one record of artifacts/host.jsonl.
type HostRecord struct {
	// Name is the host's Cordon name (Request.HostName).
	Name string `json:"name"`
	Identity
	// KernelVersion is /proc/sys/kernel/version (build number and date).
	KernelVersion string `json:"kernel_version"`
	// Architecture is uname(2) machine ("x86_64", "aarch64").
	Architecture string `json:"architecture"`
	// Tainted is /proc/sys/kernel/tainted: 0 for an untainted kernel,
	// else the taint flags (Documentation/admin-guide/tainted-kernels);
	// null when unreadable.
	Tainted *uint64 `json:"tainted"`
	// OSRelease holds the variables of /etc/os-release (os-release(5)),
	// or of /usr/lib/os-release when the former is missing, unquoted.
	OSRelease map[string]string `json:"os_release"`
	// UptimeSeconds is the first number of /proc/uptime, in seconds.
	UptimeSeconds float64 `json:"uptime_seconds"`
	// DMI holds the readable files of /sys/class/dmi/id (SMBIOS) that
	// identify the machine: sys_vendor, product_name, product_uuid,
	// product_serial, board_asset_tag, chassis_asset_tag, …, by file name.
	// Empty on machines without DMI.
	DMI map[string]string `json:"dmi"`
	// CloudProvider is "aws", "azure", "gcp", … when the DMI data or
	// cloud-init say so, else "".
	CloudProvider string `json:"cloud_provider"`
	// CloudInstanceID is the cloud instance ID as the host itself records
	// it, with no network access: an AWS board_asset_tag ("i-…"), the
	// Azure VM ID (product_uuid), or cloud-init's
	// /var/lib/cloud/data/instance-id. "" when none is known.
	CloudInstanceID string `json:"cloud_instance_id"`
	// CloudInstanceIDSource is the file CloudInstanceID came from.
	CloudInstanceIDSource string `json:"cloud_instance_id_source"`
}

// ConnectionRecord is one record of artifacts/connections.jsonl: one
// socket of one network namespace, as the kernel lists it in
// /proc/[pid]/net/{tcp,tcp6,udp,udp6,udplite,udplite6,raw,raw6,icmp,icmp6,
// packet,netlink}, or, for unix sockets, sock_diag(7); listening and
// unconnected ones included. A socket never bound (a TCP or UDP socket
// before bind or connect) is in no table, nor are sockets of the families
// not read (SCTP, vsock, Bluetooth, AF_ALG, XDP, TIPC, MPTCP, …): the
// artifact's errors count the socket fds no row matched.
type ConnectionRecord struct {
	// NetNS is the inode of the socket's network namespace (the number in
	// /proc/[pid]/ns/net, "net:[4026531840]").
	NetNS uint64 `json:"netns"`
	// NetNSName names the namespace when a file system holds it: the
	// name under /run/netns (ip-netns(8)), else the path of its nsfs
	// mount; "" for a namespace only processes hold.
	NetNSName string `json:"netns_name"`
	// Family is "inet", "inet6", "unix", "packet" or "netlink". An IPv4
	// address of an inet6 socket (::ffff:a.b.c.d) shows as a dotted IPv4
	// address.
	Family string `json:"family"`
	// Type is "tcp", "udp", "udplite", "raw" or "icmp" (a ping socket,
	// SOCK_DGRAM with IPPROTO_ICMP or IPPROTO_ICMPV6) for inet and inet6;
	// "stream", "dgram" or "seqpacket" for unix; "raw" or "dgram" for
	// packet; the netlink protocol's name for netlink ("route",
	// "sock_diag", "audit", "netfilter", "kobject_uevent", "generic", …,
	// or its number).
	Type string `json:"type"`
	// Protocol is the IP protocol number of a raw or ping socket (1 ICMP,
	// 58 ICMPv6, 255 raw), the EtherType of a packet socket (0x0003 all)
	// or the netlink protocol number; 0 otherwise.
	Protocol uint16 `json:"protocol"`
	// LocalAddr is the local IP address in text form, "0.0.0.0" or "::"
	// when bound to every address; "" for unix, packet and netlink. IPv6
	// addresses are in their compressed form (RFC 5952: "fd00:c0de::2").
	LocalAddr string `json:"local_addr"`
	// LocalPort is the local port (for a ping socket its echo
	// identifier); 0 when unbound, and for raw, unix, packet and netlink
	// sockets.
	LocalPort uint16 `json:"local_port"`
	// RemoteAddr is the peer's IP address, "0.0.0.0" or "::" when not
	// connected; "" for unix, packet and netlink.
	RemoteAddr string `json:"remote_addr"`
	// RemotePort is the peer's port; 0 when not connected.
	RemotePort uint16 `json:"remote_port"`
	// Path is a unix socket's bound path, exactly as bound (from
	// UNIX_DIAG_NAME, newlines and all); an abstract name starts with "@"
	// (unix(7)), so that, as with ss(8), a path bound relative to the
	// binder's directory that starts with "@" prints the same; "" when
	// unbound.
	Path string `json:"path"`
	// PathB64 is Path's exact bytes in base64 when they are not UTF-8
	// (see the package documentation).
	PathB64 string `json:"path_b64,omitempty"`
	// PeerInode is the inode of a connected unix socket's peer, from
	// sock_diag(7) (UNIX_DIAG_PEER); 0 when unconnected or unknown.
	PeerInode uint64 `json:"peer_inode"`
	// InterfaceIndex is the interface a packet socket is bound to; 0 for
	// all interfaces and for other families.
	InterfaceIndex int32 `json:"interface_index"`
	// State is the TCP state ("LISTEN", "ESTABLISHED", "TIME_WAIT", …,
	// include/net/tcp_states.h); for udp and raw "UNCONN" or
	// "ESTABLISHED" (connected), as ss(8) says, and so for udplite and
	// icmp; for unix "LISTEN", "UNCONNECTED", "CONNECTING" (a connection
	// not yet accepted), "CONNECTED" or "DISCONNECTING"; for packet and
	// netlink "".
	State string `json:"state"`
	// UID owns the socket (the uid column of /proc/net/*, or
	// UNIX_DIAG_UID for unix sockets); null when unknown, and for netlink.
	UID *uint32 `json:"uid"`
	// Inode is the socket's inode number, as in "socket:[inode]" in
	// /proc/[pid]/fd; 0 for a socket no file refers to (TIME_WAIT).
	Inode uint64 `json:"inode"`
	// TxQueue and RxQueue are the bytes in the send and receive queues
	// (for a listening TCP socket, RxQueue is the accept backlog; for
	// netlink, the Wmem and Rmem columns); 0 for unix.
	TxQueue uint64 `json:"tx_queue"`
	// RxQueue is the bytes in the receive queue.
	RxQueue uint64 `json:"rx_queue"`
	// PIDs are every process (in the agent's PID namespace) holding the
	// socket in its file descriptor table, ascending; empty when none
	// does (TIME_WAIT, or held by a process that exited before its fds
	// were read). Join with processes.jsonl on pid.
	PIDs []int32 `json:"pids"`
	// PID is the lowest of PIDs, 0 when PIDs is empty: kept so that
	// readers of the first format keep working.
	PID int32 `json:"pid"`
}

// ConntrackRecord is one record of artifacts/conntrack.jsonl: one entry of
// the connection-tracking table of one network namespace (as
// conntrack -L lists it, read over netlink, nfnetlink_conntrack).
type ConntrackRecord struct {
	// NetNS and NetNSName are as in ConnectionRecord.
	NetNS uint64 `json:"netns"`
	// NetNSName is as in ConnectionRecord.
	NetNSName string `json:"netns_name"`
	// Family is "inet" or "inet6".
	Family string `json:"family"`
	// Protocol is the IP protocol number (6 TCP, 17 UDP, 1 ICMP, …).
	Protocol uint8 `json:"protocol"`
	// Original is the tuple in the direction of the first packet; Reply
	// the expected reply (they differ under NAT).
	Original ConntrackTuple `json:"original"`
	// Reply is the tuple of the reply direction.
	Reply ConntrackTuple `json:"reply"`
	// TCPState is the conntrack TCP state ("ESTABLISHED", "TIME_WAIT",
	// …); "" for other protocols.
	TCPState string `json:"tcp_state"`
	// Mark is the connection mark (ctmark), Zone the conntrack zone.
	Mark uint32 `json:"mark"`
	// Zone is the conntrack zone.
	Zone uint16 `json:"zone"`
	// TimeoutSeconds is the seconds left before the entry expires.
	TimeoutSeconds uint32 `json:"timeout_seconds"`
	// StartUnixNS is when the entry was created, in nanoseconds since the
	// Unix epoch; 0 unless net.netfilter.nf_conntrack_timestamp is on.
	StartUnixNS uint64 `json:"start_unix_ns"`
	// Labels are the connection labels in hex; "" when none.
	Labels string `json:"labels"`
}

// ConntrackTuple is one direction of a conntrack entry.
type ConntrackTuple struct {
	// Src and Dst are the IP addresses in text form.
	Src string `json:"src"`
	// Dst is the destination address.
	Dst string `json:"dst"`
	// SrcPort and DstPort are the ports (TCP, UDP, SCTP, …); 0 otherwise.
	SrcPort uint16 `json:"src_port"`
	// DstPort is the destination port.
	DstPort uint16 `json:"dst_port"`
	// Packets and Bytes are the counters, 0 unless
	// net.netfilter.nf_conntrack_acct is on.
	Packets uint64 `json:"packets"`
	// Bytes is the byte counter.
	Bytes uint64 `json:"bytes"`
}

// Namespaces are the inode numbers of a process's namespaces
// (/proc/[pid]/ns/*, namespaces(7)); 0 when unreadable.
type Namespaces struct {
	// Net is the network namespace (joins ConnectionRecord.NetNS).
	Net uint64 `json:"net"`
	// PID is the PID namespace.
	PID uint64 `json:"pid"`
	// Mnt is the mount namespace (joins MountRecord.MntNS).
	Mnt uint64 `json:"mnt"`
	// UTS is the host name namespace.
	UTS uint64 `json:"uts"`
	// IPC is the System V IPC namespace.
	IPC uint64 `json:"ipc"`
	// User is the user namespace.
	User uint64 `json:"user"`
	// Cgroup is the cgroup namespace.
	Cgroup uint64 `json:"cgroup"`
}

// ProcessRecord is one record of artifacts/processes.jsonl: one process
// (thread group), in the agent's PID namespace. A process is identified by
// (boot_id, PID, StartTicks): a PID may be reused, and ticks count from
// boot.
type ProcessRecord struct {
	// PID is the process ID.
	PID int32 `json:"pid"`
	// PPID is the parent's process ID; 0 for init and kthreadd.
	PPID int32 `json:"ppid"`
	// StartTime is when the process started, UTC, RFC 3339 (10 ms
	// resolution): the clock record's boot_time rounded to the nearest 10
	// ms, plus StartTicks. It is the same in every snapshot of one boot
	// until the clock is stepped (settimeofday, an NTP step), which moves
	// boot_time; "" when unknown.
	StartTime string `json:"start_time"`
	// StartTicks is starttime, field 22 of /proc/[pid]/stat: clock ticks
	// (1/100 s) after boot.
	StartTicks uint64 `json:"start_ticks"`
	// Name is the kernel's comm (field 2 of /proc/[pid]/stat, at most 15
	// bytes), never derived from argv, which a process can rewrite.
	Name string `json:"name"`
	// NameB64 is Name's exact bytes in base64 when they are not UTF-8.
	NameB64 string `json:"name_b64,omitempty"`
	// Cmdline is argv as the process presents it in /proc/[pid]/cmdline,
	// empty arguments kept; empty for kernel threads and zombies.
	Cmdline []string `json:"cmdline"`
	// CmdlineB64 is present only when an argument is not valid UTF-8: then
	// it has one element per element of Cmdline, each that argument's
	// exact bytes in base64 (see the package documentation).
	CmdlineB64 []string `json:"cmdline_b64,omitempty"`
	// Exe is the target of /proc/[pid]/exe as the kernel gives it (with
	// " (deleted)" appended when the file was deleted); "" for kernel
	// threads and zombies.
	Exe string `json:"exe"`
	// ExeB64 is Exe's exact bytes in base64 when they are not UTF-8.
	ExeB64 string `json:"exe_b64,omitempty"`
	// ExeDeleted is true when the name the process was started by no
	// longer names its executable: the kernel marks Exe with
	// " (deleted)" (a name removed after exec, even when the file lives on
	// under another hard link), or the file has no name at all (link
	// count 0: deleted, or a memfd, "/memfd:NAME (deleted)"). A file may
	// also be named "… (deleted)" for real: on a local file system that
	// name is looked up where the kernel's path starts (the agent's root
	// for a process in the agent's mount namespace, chrooted or not; else
	// the root of the process's mount namespace), following no symbolic
	// link at its end, and ExeDeleted is false only when it finds the
	// executable itself (same device and inode). A hard link to the
	// executable made under that very name after the removal therefore
	// also reads as false: nothing visible from outside the kernel tells
	// the two apart. On a FUSE or network file system, or one of unknown
	// type, the name is not looked up and ExeDeleted is true.
	ExeDeleted bool `json:"exe_deleted"`
	// ExeSHA256 is the lowercase hex SHA-256 of the executable's content,
	// read through /proc/[pid]/exe with O_NOATIME (so it works for a
	// deleted file too); "" when not hashed, and ExeError says why.
	ExeSHA256 string `json:"exe_sha256"`
	// ExeSize is the executable's size in bytes.
	ExeSize int64 `json:"exe_size"`
	// ExeDevice is the executable's device, "major:minor", and ExeInode
	// its inode: processes running the same file share them (and the
	// hash, computed once per file).
	ExeDevice string `json:"exe_device"`
	// ExeInode is the executable's inode number.
	ExeInode uint64 `json:"exe_inode"`
	// ExeError says why the executable was not hashed (too large, on a
	// FUSE or network file system, not read within ExeHashTimeout or
	// still not answering since an earlier snapshot gave up on it,
	// unreadable), or that it was read without O_NOATIME, or changed
	// between the scan and its hashing.
	ExeError string `json:"exe_error,omitempty"`
	// Cwd is the target of /proc/[pid]/cwd.
	Cwd string `json:"cwd"`
	// CwdB64 is Cwd's exact bytes in base64 when they are not UTF-8.
	CwdB64 string `json:"cwd_b64,omitempty"`
	// Root is the target of /proc/[pid]/root: "/" unless chrooted or in a
	// container.
	Root string `json:"root"`
	// RootB64 is Root's exact bytes in base64 when they are not UTF-8.
	RootB64 string `json:"root_b64,omitempty"`
	// UID and EUID are the real and effective user IDs, GID and EGID the
	// real and effective group IDs (the Uid: and Gid: lines of
	// /proc/[pid]/status); null when unreadable.
	UID *uint32 `json:"uid"`
	// EUID is the effective user ID.
	EUID *uint32 `json:"euid"`
	// GID is the real group ID.
	GID *uint32 `json:"gid"`
	// EGID is the effective group ID.
	EGID *uint32 `json:"egid"`
	// User, EUser, Group and EGroup name those IDs from /etc/passwd and
	// /etc/group (read once, never through NSS, which might use the
	// network); "" when not there.
	User string `json:"user"`
	// EUser names EUID.
	EUser string `json:"euser"`
	// Group names GID.
	Group string `json:"group"`
	// EGroup names EGID.
	EGroup string `json:"egroup"`
	// State is the one-letter state of /proc/[pid]/stat: R running, S
	// sleeping, D disk sleep, Z zombie, T stopped, t traced, I idle, X
	// dead.
	State string `json:"state"`
	// PGID and SID are the process group and session IDs.
	PGID int32 `json:"pgid"`
	// SID is the session ID.
	SID int32 `json:"sid"`
	// TTY is the controlling terminal's device number (tty_nr), 0 for
	// none.
	TTY uint32 `json:"tty"`
	// KernelThread is true for kernel threads (PF_KTHREAD).
	KernelThread bool `json:"kernel_thread"`
	// Threads is the number of threads.
	Threads int32 `json:"threads"`
	// RSSBytes is the resident set size in bytes.
	RSSBytes int64 `json:"rss_bytes"`
	// FDCount is the number of open file descriptors; null when
	// /proc/[pid]/fd could not be read. open_files.jsonl lists them.
	FDCount *int32 `json:"fd_count"`
	// Cgroup holds the lines of /proc/[pid]/cgroup
	// ("hierarchy-ID:controllers:path", cgroups(7)).
	Cgroup []string `json:"cgroup"`
	// Namespaces are the process's namespace inodes.
	Namespaces Namespaces `json:"namespaces"`
	// EnvNames are the names of the process's environment variables
	// (/proc/[pid]/environ), in order; the values are never read into
	// the evidence.
	EnvNames []string `json:"env_names"`
	// EnvNamesB64 is present only when a name is not valid UTF-8, one
	// element per element of EnvNames, as CmdlineB64.
	EnvNamesB64 []string `json:"env_names_b64,omitempty"`
	// Error says what could not be read. It starts with "exited during
	// the scan" for a process that ended while it was being read (the
	// fields read before are kept), with "pid reused during the scan"
	// when the process listed had ended and its PID was already taken by a
	// newer one, which this record describes, and with "not read:" for a
	// process given up on because a read of one of its /proc files did not
	// answer (the fields read before it are kept; see ProcReadTimeout), or
	// still does not since an earlier snapshot by the same process gave up
	// on it ("… still not answering since an earlier snapshot"; the fields
	// of its stat are kept).
	Error string `json:"error,omitempty"`
}

// OpenFilesRecord is one record of artifacts/open_files.jsonl: the file
// descriptor table of one process.
type OpenFilesRecord struct {
	// PID and StartTime identify the process, as in processes.jsonl.
	PID int32 `json:"pid"`
	// StartTime is the process's start time, as in processes.jsonl.
	StartTime string `json:"start_time"`
	// FDs are the process's open descriptors, ascending.
	FDs []OpenFile `json:"fds"`
	// Error says what could not be read, as ProcessRecord.Error.
	Error string `json:"error,omitempty"`
}

// OpenFile is one file descriptor.
type OpenFile struct {
	// FD is the descriptor number.
	FD int32 `json:"fd"`
	// Target is the readlink of /proc/[pid]/fd/FD: a path (with
	// " (deleted)" when deleted), or "socket:[inode]", "pipe:[inode]",
	// "anon_inode:[eventfd]", ….
	Target string `json:"target"`
	// TargetB64 is Target's exact bytes in base64 when not UTF-8.
	TargetB64 string `json:"target_b64,omitempty"`
}

// RouteRecord is one record of artifacts/routes.jsonl: one route of one
// network namespace, from every routing table (RTM_GETROUTE, rtnetlink(7)).
type RouteRecord struct {
	// NetNS and NetNSName are as in ConnectionRecord.
	NetNS uint64 `json:"netns"`
	// NetNSName is as in ConnectionRecord.
	NetNSName string `json:"netns_name"`
	// Family is "inet" or "inet6".
	Family string `json:"family"`
	// Table is the routing table number (254 main, 255 local).
	Table int `json:"table"`
	// Type is the route type ("unicast", "local", "broadcast",
	// "blackhole", "unreachable", "prohibit", …).
	Type string `json:"type"`
	// Dst is the destination prefix ("default" for 0.0.0.0/0 and ::/0).
	Dst string `json:"dst"`
	// Gateway is the next hop's address; "" when directly connected.
	Gateway string `json:"gateway"`
	// PrefSrc is the preferred source address; "" when none.
	PrefSrc string `json:"prefsrc"`
	// Dev is the output interface's name, InterfaceIndex its index.
	Dev string `json:"dev"`
	// InterfaceIndex is the output interface's index.
	InterfaceIndex int `json:"interface_index"`
	// Protocol is who installed the route ("kernel", "boot", "static",
	// "dhcp", or a number).
	Protocol string `json:"protocol"`
	// Scope is "universe", "link", "host", … .
	Scope string `json:"scope"`
	// Metric is the route's priority.
	Metric int `json:"metric"`
	// Multipath lists the next hops of a multipath route.
	Multipath []NextHop `json:"multipath,omitempty"`
}

// NextHop is one path of a multipath route.
type NextHop struct {
	// Gateway is the next hop's address.
	Gateway string `json:"gateway"`
	// InterfaceIndex is the output interface's index.
	InterfaceIndex int `json:"interface_index"`
	// Weight is the path's weight (hops + 1).
	Weight int `json:"weight"`
}

// NeighbourRecord is one record of artifacts/neighbours.jsonl: one ARP
// (IPv4) or NDP (IPv6) cache entry of one network namespace
// (RTM_GETNEIGH, rtnetlink(7)).
type NeighbourRecord struct {
	// NetNS and NetNSName are as in ConnectionRecord.
	NetNS uint64 `json:"netns"`
	// NetNSName is as in ConnectionRecord.
	NetNSName string `json:"netns_name"`
	// Family is "inet" (ARP) or "inet6" (NDP).
	Family string `json:"family"`
	// IP is the neighbour's address.
	IP string `json:"ip"`
	// LLAddr is its link-layer (MAC) address; "" when unresolved.
	LLAddr string `json:"lladdr"`
	// Dev is the interface's name, InterfaceIndex its index.
	Dev string `json:"dev"`
	// InterfaceIndex is the interface's index.
	InterfaceIndex int `json:"interface_index"`
	// State is the NUD state: "REACHABLE", "STALE", "PERMANENT",
	// "FAILED", … (several joined by "|").
	State string `json:"state"`
	// Router is true when the neighbour announced itself as a router.
	Router bool `json:"router"`
}

// InterfaceRecord is one record of artifacts/interfaces.jsonl: one network
// interface of one network namespace (RTM_GETLINK and RTM_GETADDR,
// rtnetlink(7)).
type InterfaceRecord struct {
	// NetNS and NetNSName are as in ConnectionRecord.
	NetNS uint64 `json:"netns"`
	// NetNSName is as in ConnectionRecord.
	NetNSName string `json:"netns_name"`
	// Index is the interface index, Name its name.
	Index int `json:"index"`
	// Name is the interface's name.
	Name string `json:"name"`
	// Type is the link type ("device", "veth", "bridge", "vlan", …).
	Type string `json:"type"`
	// HardwareAddr is the MAC address; "" when none.
	HardwareAddr string `json:"hardware_addr"`
	// MTU is the maximum transmission unit in bytes.
	MTU int `json:"mtu"`
	// Flags are the interface flags ("up", "broadcast", "loopback",
	// "multicast", "running", "promisc", …).
	Flags []string `json:"flags"`
	// OperState is the RFC 2863 operational state ("up", "down",
	// "unknown", …).
	OperState string `json:"oper_state"`
	// MasterIndex is the index of the bridge or bond the interface is
	// enslaved to; 0 when none.
	MasterIndex int `json:"master_index"`
	// PeerNetNSID is a veth peer's network namespace ID as this namespace
	// numbers it (not an inode); -1 when none.
	PeerNetNSID int `json:"peer_netnsid"`
	// Addresses are the interface's IP addresses.
	Addresses []InterfaceAddr `json:"addresses"`
	// Stats are the interface's counters since it was created.
	Stats InterfaceStats `json:"stats"`
}

// InterfaceAddr is one address of an interface.
type InterfaceAddr struct {
	// Address is the address and prefix length, "198.18.0.2/24".
	Address string `json:"address"`
	// Family is "inet" or "inet6".
	Family string `json:"family"`
	// Scope is "universe" (global), "link", "host", … .
	Scope string `json:"scope"`
	// Label is the IPv4 address label ("eth0:1"); "" for IPv6.
	Label string `json:"label"`
	// ValidLifetime and PreferredLifetime are the seconds left, 0 for
	// forever.
	ValidLifetime int `json:"valid_lifetime"`
	// PreferredLifetime is the preferred lifetime in seconds.
	PreferredLifetime int `json:"preferred_lifetime"`
}

// InterfaceStats are an interface's counters (struct rtnl_link_stats64).
type InterfaceStats struct {
	// RxBytes and TxBytes are the bytes received and sent.
	RxBytes uint64 `json:"rx_bytes"`
	// TxBytes is the bytes sent.
	TxBytes uint64 `json:"tx_bytes"`
	// RxPackets and TxPackets are the packets received and sent.
	RxPackets uint64 `json:"rx_packets"`
	// TxPackets is the packets sent.
	TxPackets uint64 `json:"tx_packets"`
	// RxErrors and TxErrors count bad packets received and failed sends.
	RxErrors uint64 `json:"rx_errors"`
	// TxErrors counts failed sends.
	TxErrors uint64 `json:"tx_errors"`
	// RxDropped and TxDropped count packets dropped on the way in and out.
	RxDropped uint64 `json:"rx_dropped"`
	// TxDropped counts packets dropped on the way out.
	TxDropped uint64 `json:"tx_dropped"`
}

// SessionRecord is one record of artifacts/sessions.jsonl: one entry of
// utmp (logged-in sessions), wtmp (logins and logouts), btmp (failed
// logins) — struct utmp, utmp(5) — or one systemd-logind session.
type SessionRecord struct {
	// Source is the file the record came from: "/run/utmp",
	// "/var/log/wtmp", "/var/log/btmp", or
	// "/run/systemd/sessions/<id>".
	Source string `json:"source"`
	// Type is ut_type by name ("USER_PROCESS", "DEAD_PROCESS",
	// "BOOT_TIME", "LOGIN_PROCESS", "INIT_PROCESS", "RUN_LVL", …), or
	// "LOGIND_SESSION" for a logind session.
	Type string `json:"type"`
	// PID is the login process (ut_pid, logind LEADER).
	PID int32 `json:"pid"`
	// Line is the terminal ("pts/0", ut_line; logind TTY).
	Line string `json:"line"`
	// ID is ut_id, the terminal's short name; the session ID for logind.
	ID string `json:"id"`
	// User is the user name (ut_user; logind USER is a uid, see UID).
	User string `json:"user"`
	// UserB64 is User's exact bytes in base64 when not UTF-8.
	UserB64 string `json:"user_b64,omitempty"`
	// UID is the user ID of a logind session; null for utmp records.
	UID *uint32 `json:"uid"`
	// Host is the remote host name or address (ut_host; logind
	// REMOTE_HOST).
	Host string `json:"host"`
	// HostB64 is Host's exact bytes in base64 when not UTF-8.
	HostB64 string `json:"host_b64,omitempty"`
	// Addr is ut_addr_v6 as an IP address; "" when all zero.
	Addr string `json:"addr"`
	// Time is when the entry was written (ut_tv; logind REALTIME), UTC.
	Time string `json:"time"`
	// Session is ut_session (the session ID of the login process).
	Session int32 `json:"session"`
	// ExitTermination and ExitStatus are ut_exit of a DEAD_PROCESS.
	ExitTermination int16 `json:"exit_termination"`
	// ExitStatus is ut_exit.e_exit.
	ExitStatus int16 `json:"exit_status"`
	// Service, Class, State and Remote are logind session fields
	// ("sshd", "user", "active", true); "" for utmp records.
	Service string `json:"service,omitempty"`
	// Class is the logind session class.
	Class string `json:"class,omitempty"`
	// State is the logind session state.
	State string `json:"state,omitempty"`
}

// ModuleRecord is one record of artifacts/modules.jsonl: one loaded kernel
// module, a line of /proc/modules (proc(5), lsmod(8)).
type ModuleRecord struct {
	// Name is the module's name.
	Name string `json:"name"`
	// SizeBytes is its memory size in bytes.
	SizeBytes uint64 `json:"size_bytes"`
	// RefCount is the number of references to it.
	RefCount int `json:"ref_count"`
	// UsedBy are the modules that depend on it.
	UsedBy []string `json:"used_by"`
	// State is "Live", "Loading" or "Unloading".
	State string `json:"state"`
	// Address is its load address (all zeros without CAP_SYSLOG or
	// under kptr_restrict).
	Address string `json:"address"`
	// Taints are the module's taint flags ("O" out-of-tree, "E"
	// unsigned, "P" proprietary, …); "" when none.
	Taints string `json:"taints"`
}

// MountRecord is one record of artifacts/mounts.jsonl: one line of
// /proc/[pid]/mountinfo (proc(5)) of one mount namespace.
type MountRecord struct {
	// MntNS is the mount namespace's inode, PID the process it was read
	// through.
	MntNS uint64 `json:"mntns"`
	// PID is the process the mount table was read through.
	PID int32 `json:"pid"`
	// MountID and ParentID are fields 1 and 2.
	MountID int `json:"mount_id"`
	// ParentID is the parent mount's ID.
	ParentID int `json:"parent_id"`
	// Device is "major:minor" (field 3).
	Device string `json:"device"`
	// Root is the root of the mount within its file system (field 4).
	Root string `json:"root"`
	// MountPoint is where it is mounted (field 5), octal escapes
	// (\040 for a space) decoded.
	MountPoint string `json:"mount_point"`
	// MountPointB64 is MountPoint's exact bytes in base64 when not UTF-8.
	MountPointB64 string `json:"mount_point_b64,omitempty"`
	// Options are the per-mount options (field 6, "rw,relatime").
	Options string `json:"options"`
	// Optional are the optional fields ("shared:1", "master:2").
	Optional []string `json:"optional"`
	// FSType is the file system type ("ext4", "overlay", "nsfs").
	FSType string `json:"fs_type"`
	// Source is the mount source ("/dev/vda1", "overlay").
	Source string `json:"source"`
	// SuperOptions are the per-superblock options.
	SuperOptions string `json:"super_options"`
}

// FirewallRecord is one record of artifacts/firewall.jsonl: one command run
// to dump the firewall ruleset of the agent's own network namespace (a
// container's namespace has its own ruleset, which is not read). On an
// isolate order it is the ruleset before isolation; on a triage snapshot,
// whatever is in force, Cordon's rules included if the host is isolated.
// Its output is in the bundle as raw/exec/<command> (its name with spaces
// as '-').
type FirewallRecord struct {
	// Command is the command line run ("iptables-save",
	// "nft list ruleset").
	Command string `json:"command"`
	// Path is the executable found for it; "" when missing.
	Path string `json:"path"`
	// Output is the bundle path of its standard output, "" when it did
	// not run.
	Output string `json:"output"`
	// OutputBytes is the size of its standard output.
	OutputBytes int `json:"output_bytes"`
	// ExitCode is its exit status; -1 when it did not run or was killed.
	ExitCode int `json:"exit_code"`
	// Stderr is its standard error, at most 4 KiB.
	Stderr string `json:"stderr"`
	// DurationNS is how long it ran, in nanoseconds.
	DurationNS int64 `json:"duration_ns"`
	// Error says why it did not run or failed; "" when it succeeded.
	Error string `json:"error,omitempty"`
}
