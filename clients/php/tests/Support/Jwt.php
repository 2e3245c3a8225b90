<?php

declare(strict_types=1);

namespace Tickwire\Tests\Support;

/** HS256 tokens for a server run with `auth.mode = "jwt"` and {@see self::SECRET}. */
final class Jwt
{
    public const SECRET = 'tickwire-php-test-secret-0123456789abcdef';

    /** @return array<string, string> the server settings */
    public static function env(): array
    {
        return [
            'TICKWIRE__AUTH__MODE' => 'jwt',
            'TICKWIRE__AUTH__JWT__HS256_SECRET' => self::SECRET,
            'TICKWIRE__AUTH__JWT__LEEWAY' => '0s',
        ];
    }

    public static function token(string $sub, array $subscribe, array $publish, int $ttl, string $secret = self::SECRET): string
    {
        $b64 = fn (string $s) => rtrim(strtr(base64_encode($s), '+/', '-_'), '=');
        $head = $b64(json_encode(['alg' => 'HS256', 'typ' => 'JWT']));
        $claims = $b64(json_encode(['sub' => $sub, 'exp' => time() + $ttl, 'subscribe' => $subscribe, 'publish' => $publish]));
        return "$head.$claims." . $b64(hash_hmac('sha256', "$head.$claims", $secret, true));
    }
}
