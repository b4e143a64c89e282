/*
 * Fuzz target for the configuration parser. Any input must either parse or
 * fail with a "NAME:" message; never crash, leak or read out of bounds. A
 * parsed configuration must survive a round trip through its own accessors,
 * and an error message must stay bounded and free of control characters
 * (it is printed to a terminal as is).
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	sm_config *cfg = NULL;
	char *err = NULL;
	int ret = sm_config_parse((const char *)data, size, "fuzz.conf", &cfg, &err);

	if (ret == 0) {
		if (cfg == NULL || err != NULL || cfg->data_dir == NULL ||
		    cfg->listen_address == NULL || cfg->hostname == NULL ||
		    cfg->tls_cert == NULL || !sm_config_hostname_valid(cfg->hostname))
			abort();
		if (sm_config_port(cfg, "imaps_port") != cfg->imaps_port)
			abort();
		free(sm_config_redis_url_public(cfg));
	} else {
		if (cfg != NULL || err == NULL || strncmp(err, "fuzz.conf:", 10) != 0)
			abort();
		if (strlen(err) > 512)
			abort();
		for (const char *c = err; *c != '\0'; c++) {
			if ((unsigned char)*c < 0x20)
				abort();
		}
	}
	sm_config_free(&cfg);
	free(err);
	return 0;
}
