package snapshot

import (
	"github.com/shirou/gopsutil/v4/cpu"
	"github.com/shirou/gopsutil/v4/load"
	"github.com/shirou/gopsutil/v4/mem"
)

// ResourcesRecord is the host's load at the moment of the snapshot: what a
// miner, an exfiltration or a wiper would show. One record.
type ResourcesRecord struct {
	// Load averages over 1, 5 and 15 minutes (runnable and uninterruptible
	// tasks, proc(5) /proc/loadavg).
	Load1  float64 `json:"load1"`
	Load5  float64 `json:"load5"`
	Load15 float64 `json:"load15"`
	// Memory and swap, in bytes (/proc/meminfo).
	MemTotal     uint64 `json:"mem_total_bytes"`
	MemAvailable uint64 `json:"mem_available_bytes"`
	MemUsed      uint64 `json:"mem_used_bytes"`
	SwapTotal    uint64 `json:"swap_total_bytes"`
	SwapUsed     uint64 `json:"swap_used_bytes"`
	// CPU time since boot, all CPUs together, in seconds (/proc/stat).
	CPUUser   float64 `json:"cpu_user_seconds"`
	CPUSystem float64 `json:"cpu_system_seconds"`
	CPUIdle   float64 `json:"cpu_idle_seconds"`
	CPUIOWait float64 `json:"cpu_iowait_seconds"`
	CPUSteal  float64 `json:"cpu_steal_seconds"`
}

// collectResources reads load, memory and CPU time through gopsutil. These
// are /proc files, which keep no access time, so O_NOATIME does not matter
// for them.
func (c *collection) collectResources() {
	a := c.art[ResourcesArtifact]
	defer a.close()
	var r ResourcesRecord
	if l, err := load.AvgWithContext(c.ctx); err != nil {
		a.errorf("load: %v", err)
	} else {
		r.Load1, r.Load5, r.Load15 = l.Load1, l.Load5, l.Load15
	}
	if m, err := mem.VirtualMemoryWithContext(c.ctx); err != nil {
		a.errorf("memory: %v", err)
	} else {
		r.MemTotal, r.MemAvailable, r.MemUsed = m.Total, m.Available, m.Used
	}
	if sw, err := mem.SwapMemoryWithContext(c.ctx); err != nil {
		a.errorf("swap: %v", err)
	} else {
		r.SwapTotal, r.SwapUsed = sw.Total, sw.Used
	}
	if t, err := cpu.TimesWithContext(c.ctx, false); err != nil || len(t) == 0 {
		a.errorf("cpu times: %v", err)
	} else {
		r.CPUUser, r.CPUSystem, r.CPUIdle, r.CPUIOWait, r.CPUSteal = t[0].User, t[0].System, t[0].Idle, t[0].Iowait, t[0].Steal
	}
	a.encode(&r)
}
