//! Waiting until a stopped model's memory is seen free (placeholder, filled below).
