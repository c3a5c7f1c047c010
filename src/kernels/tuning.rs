//! The per-adapter choice of kernel variants, in one table.
