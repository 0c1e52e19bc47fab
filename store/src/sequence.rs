//! Positions for backends whose global order is one sequence number n = 1, 2, 3, …, shown
//! as `Position { commit: n, prepare: n }` (memory, embedded). Only those may use it.

use crate::api::Position;

/// The first sequence number whose position `(n, n)` lies strictly after `after`.
pub(crate) fn first_seq_after(after: Option<Position>) -> u64 {
    match after {
        None => 1,
        // A position from elsewhere in the order, e.g. another backend's: (c, c) is after
        // it exactly when its prepare part is below c.
        Some(p) if p.prepare < p.commit => p.commit,
        Some(p) => p.commit.saturating_add(1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_sequence_after_a_position_is_strictly_after_it() {
        assert_eq!(first_seq_after(None), 1);
        assert_eq!(first_seq_after(Some(Position::new(5, 5))), 6);
        assert_eq!(first_seq_after(Some(Position::new(5, 4))), 5);
        assert_eq!(first_seq_after(Some(Position::new(5, 9))), 6);
        assert_eq!(
            first_seq_after(Some(Position::new(u64::MAX, u64::MAX))),
            u64::MAX
        );
    }
}
