//! The evacuating thread's scheduling while it holds a chunk: raised to real-time
//! (`SCHED_FIFO`, priority 1) from the moment the chunk is write-protected until its writers are
//! woken, then put back as it was.
//!
//! Why: a writer of the chunk sleeps until the evacuating thread has copied and remapped it.
//! If that thread loses its core in between (a time slice ending while other threads and
//! processes want the CPU), the writer waits out the other jobs' slices too: on the loaded
//! 2-core machine of BENCHMARKS.md, 1% of holds took 7-27 ms instead of ~50 us. A real-time
//! thread is not preempted by ordinary ones, so a hold lasts one chunk's copy, remap and wake
//! whatever the load. The window is bounded (one chunk; the copy's pages are present before it
//! starts) and the kernel's real-time throttling still applies.
//!
//! It needs `CAP_SYS_NICE` (or an `RLIMIT_RTPRIO` of at least 1). Without it the first attempt
//! fails with EPERM, and the move goes on at the thread's own priority, holds exposed to
//! preemption (the report says which). `TIERMALLOC_EVACUATE_RT=0` (or `no`, `off`, `false`)
//! turns it off. A thread
//! already real-time is left alone.
//!
//! The raise happens with the tier's heap lock already held (the lock spins: a real-time
//! thread spinning on a lock whose holder it preempted on the same core would spin until the
//! throttling stops it), and nothing the held window does waits on a spinning lock.

/// The thread's policy before a raise, to put back.
pub(super) struct HoldPriority {
    enabled: bool,
    raised: Option<(i32, libc::sched_param)>,
    /// The thread's own policy, read at the first raise and put back after every hold (two
    /// system calls a chunk fewer than reading it each time; nothing but this evacuation
    /// changes the thread's policy while it runs `tm_evacuate`).
    own: Option<(i32, libc::sched_param)>,
    /// Holds that ran raised.
    pub raised_holds: u64,
}

impl HoldPriority {
    pub fn new() -> HoldPriority {
        const NAME: &str = "TIERMALLOC_EVACUATE_RT";
        let enabled = match crate::os::getenv(NAME.as_bytes()) {
            None => true,
            value => crate::config::parse_bool(NAME, value, &mut crate::config::Stderr),
        };
        HoldPriority {
            enabled,
            raised: None,
            own: None,
            raised_holds: 0,
        }
    }

    /// Makes the calling thread `SCHED_FIFO` 1 if allowed and not real-time already. The
    /// first refusal turns raising off for this evacuation. Keeps errno.
    pub fn raise(&mut self) {
        if !self.enabled || self.raised.is_some() {
            return;
        }
        crate::os::keep_errno(|| {
            let own = match self.own {
                Some(own) => own,
                None => {
                    // SAFETY: querying the calling thread (0).
                    let policy = unsafe { libc::sched_getscheduler(0) };
                    // SAFETY: an all-zero sched_param is a valid out-parameter.
                    let mut old: libc::sched_param = unsafe { core::mem::zeroed() };
                    // SAFETY: the calling thread and a valid out-parameter.
                    if policy < 0
                        || policy == libc::SCHED_FIFO
                        || policy == libc::SCHED_RR
                        || unsafe { libc::sched_getparam(0, &mut old) } != 0
                    {
                        self.enabled = false;
                        return;
                    }
                    self.own = Some((policy, old));
                    (policy, old)
                }
            };
            let fifo = libc::sched_param { sched_priority: 1 };
            // SAFETY: the calling thread and a valid sched_param.
            if unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &fifo) } != 0 {
                self.enabled = false;
                return;
            }
            self.raised = Some(own);
            self.raised_holds += 1;
        });
    }

    /// Puts the thread's policy back (the nice value comes back with it). Keeps errno.
    pub fn lower(&mut self) {
        if let Some((policy, old)) = self.raised.take() {
            crate::os::keep_errno(|| {
                // SAFETY: the calling thread and the sched_param it had.
                unsafe { libc::sched_setscheduler(0, policy, &old) };
            });
        }
    }
}

impl Drop for HoldPriority {
    fn drop(&mut self) {
        self.lower();
    }
}
