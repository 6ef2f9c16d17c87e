//! The node budget: how much memory (the sum of the memory limits of the
//! live instances) and how many live instances one node may hold, and the
//! charge each instance holds against it.

use std::time::Duration;

/// What a caller turned away for lack of room is told to wait
/// (`retry-after`): an idle instance is paused or stopped within seconds.
pub const RETRY_AFTER: Duration = Duration::from_secs(2);
