<?php
// A PSR-4 autoloader for projects without Composer: `require 'clients/php/autoload.php';`.
// With Composer, composer.json's "autoload" section does the same.

declare(strict_types=1);

spl_autoload_register(static function (string $class): void {
    $prefixes = ['Tickwire\\Tests\\' => __DIR__ . '/tests/', 'Tickwire\\' => __DIR__ . '/src/'];
    foreach ($prefixes as $prefix => $dir) {
        if (str_starts_with($class, $prefix)) {
            $file = $dir . str_replace('\\', '/', substr($class, strlen($prefix))) . '.php';
            if (is_file($file)) {
                require $file;
            }
            return;
        }
    }
});
