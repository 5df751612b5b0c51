//! `drover schedule`.

use drover_engine::OpRegistry;

use crate::Failure;
use crate::cli::ScheduleCommand;

pub fn command(_ops: &OpRegistry, _command: ScheduleCommand) -> Result<(), Failure> {
    Err(Failure::Environment("not yet".into()))
}
