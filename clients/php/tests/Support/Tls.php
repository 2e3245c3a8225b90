<?php

declare(strict_types=1);

namespace Tickwire\Tests\Support;

/** A self-signed certificate for 127.0.0.1 and localhost, made with the openssl extension. */
final class Tls
{
    public readonly string $dir;

    public function __construct()
    {
        $this->dir = sys_get_temp_dir() . '/tickwire-php-tls-' . getmypid() . '-' . bin2hex(random_bytes(4));
        mkdir($this->dir);
        $config = "$this->dir/openssl.cnf";
        file_put_contents($config, "[req]\ndistinguished_name = dn\n[dn]\n[san]\n"
            . "subjectAltName = IP:127.0.0.1, DNS:localhost\nbasicConstraints = critical, CA:TRUE\n");
        $key = openssl_pkey_new(['private_key_type' => OPENSSL_KEYTYPE_EC, 'curve_name' => 'prime256v1']);
        $csr = openssl_csr_new(['commonName' => 'localhost'], $key, ['config' => $config, 'digest_alg' => 'sha256']);
        $cert = openssl_csr_sign($csr, null, $key, 2, ['config' => $config, 'x509_extensions' => 'san', 'digest_alg' => 'sha256'], random_int(1, PHP_INT_MAX));
        openssl_x509_export_to_file($cert, $this->cert());
        openssl_pkey_export_to_file($key, $this->key(), null, ['config' => $config]);
    }

    public function cert(): string
    {
        return "$this->dir/cert.pem";
    }

    public function key(): string
    {
        return "$this->dir/key.pem";
    }

    /** @return array<string, string> */
    public function env(): array
    {
        return ['TICKWIRE__TLS__CERT' => $this->cert(), 'TICKWIRE__TLS__KEY' => $this->key()];
    }

    public function __destruct()
    {
        foreach (glob("$this->dir/*") as $f) {
            unlink($f);
        }
        @rmdir($this->dir);
    }
}
