-- Nothing to undo: the counters created hold what the next Consume would have created them with.
SELECT 1;
