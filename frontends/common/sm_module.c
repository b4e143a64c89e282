/*
 * Loading the optional modules (sm_module.h): find the file, dlopen it
 * with its own libraries, check its descriptor. Errors are logged here,
 * once, in words an operator can act on; callers only map the code.
 */
#include "sm_module.h"
#include "eng_error.h"
#include "fsutil.h"

#include <dlfcn.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

/* Set by CMakeLists.txt from the install prefix and libdir. */
#ifndef SEALMAIL_MODULE_DIR
#define SEALMAIL_MODULE_DIR "/usr/local/lib/sealmail"
#endif
#ifndef SEALMAIL_MODULE_RELDIR
#define SEALMAIL_MODULE_RELDIR "../lib/sealmail"
#endif

/* The directories to look in, in order (sm_module.h). */
struct candidates {
	char exe[PATH_MAX];    /* the executable's directory */
	char rel[PATH_MAX];    /* SEALMAIL_MODULE_RELDIR from it */
	char fixed[PATH_MAX];  /* SEALMAIL_MODULE_DIR */
};

static void candidate_dirs(struct candidates *c)
{
	sm_fs_exe_dir(c->exe, sizeof(c->exe));
	if (c->exe[0] == '\0' ||
	    snprintf(c->rel, sizeof(c->rel), "%s/" SEALMAIL_MODULE_RELDIR,
		     c->exe) >= (int)sizeof(c->rel))
		c->rel[0] = '\0';
	snprintf(c->fixed, sizeof(c->fixed), "%s", SEALMAIL_MODULE_DIR);
}

static int check_desc(void *h, const char *file, const char *symbol,
		      const char *what, void **entry_r)
{
	const sm_module_desc *desc = dlsym(h, symbol);

	if (desc == NULL || desc->abi != SM_MODULE_ABI || desc->entry == NULL) {
		eng_log(ENG_LOG_ERROR, "%s: %s is not a module of this Sealmail "
			"build (%s; rebuild and install it with the daemons)",
			what, file, desc == NULL ? "no descriptor" :
			"another module ABI");
		return ENG_EINVAL;
	}
	*entry_r = desc->entry;
	return 0;
}

int sm_module_load(const char *file, const char *symbol, const char *what,
		   void **entry_r)
{
	struct candidates c;
	const char *dirs[3] = { c.exe, c.rel, c.fixed };
	char path[PATH_MAX];
	void *h;

	*entry_r = NULL;
	candidate_dirs(&c);
	for (size_t i = 0; i < sizeof(dirs) / sizeof(dirs[0]); i++) {
		if (dirs[i][0] == '\0' ||
		    snprintf(path, sizeof(path), "%s/%s", dirs[i], file) >=
		    (int)sizeof(path) || access(path, F_OK) != 0)
			continue;
		/* RTLD_LOCAL: its libraries' symbols stay out of the
		 * process's namespace; never unloaded (their global state,
		 * mongoc_init, curl_global_init, is not undone). */
		h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
		if (h == NULL) {
			eng_log(ENG_LOG_ERROR, "%s: cannot load %s: %s", what,
				path, dlerror());
			return ENG_EINVAL;
		}
		return check_desc(h, path, symbol, what, entry_r);
	}
	eng_log(ENG_LOG_ERROR, "%s needs the module %s, which is in none of "
		"%s, %s, %s (build it with the daemons: it is installed next "
		"to them or in the library directory)", what, file, c.exe,
		c.rel[0] != '\0' ? c.rel : "-", c.fixed);
	return ENG_ENOTFOUND;
}
