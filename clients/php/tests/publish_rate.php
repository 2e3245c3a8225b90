<?php
// Publishes to one topic at a steady rate, for the throughput test:
//   php publish_rate.php http://127.0.0.1:PORT TOPIC RATE SECONDS
// 20 batches a second of RATE/20 messages, each {"n": i, "pad": "..."}; prints what it sent.

declare(strict_types=1);

require __DIR__ . '/../autoload.php';

[, $base, $topic, $rate, $seconds] = $argv;
$publisher = new Tickwire\Publisher($base);
$per = intdiv((int) $rate, 20);
$start = microtime(true);
$n = 0;
for ($tick = 0; $tick < 20 * (int) $seconds; $tick++) {
    $due = $start + $tick / 20;
    $wait = $due - microtime(true);
    if ($wait > 0) {
        usleep((int) ($wait * 1e6));
    }
    $batch = [];
    for ($i = 0; $i < $per; $i++) {
        $batch[] = ['topic' => $topic, 'data' => ['n' => ++$n, 'pad' => str_repeat('x', 100)]];
    }
    $publisher->publishBatch($batch);
}
printf("published %d in %.2f s", $n, microtime(true) - $start);
